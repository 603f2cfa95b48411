"""Rebuilding AFlow's splits from the Hugging Face hub (``aflowctl data fetch NAME``).

AFlow's validate/test files are subsets of public datasets. ``sample/aflow_splits.json``
records which upstream problems each split holds; the functions here download the
upstream dataset with the ``datasets`` library (imported lazily: an optional
dependency) and convert its rows to AFlow's format, in AFlow's order.

DROP cannot be rebuilt this way (AFlow's ids are not the hub's), nor HotpotQA's test
split (its id list was not available): fetch those with ``--from``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from aflowctl.benchmarks.data import PACKAGE_SAMPLES
from aflowctl.errors import BenchmarkError

MATH_CONFIGS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


@lru_cache(maxsize=1)
def split_ids() -> dict[str, Any]:
    with open(PACKAGE_SAMPLES / "aflow_splits.json", encoding="utf-8") as fh:
        return json.load(fh)


def _ids(name: str, split: str) -> list:
    ids = split_ids().get(name, {}).get(split)
    if ids is None:
        raise BenchmarkError(
            f"the {split} split of {name} cannot be rebuilt from the Hugging Face hub",
            f"copy AFlow's file instead: aflowctl data fetch {name} --split {split} --from PATH",
        )
    return ids


# ------------------------------------------------------------------ converters


def gsm8k_row(hf: dict, index: int) -> dict:
    """openai/gsm8k (test split) row -> AFlow row."""
    text = str(hf["answer"])
    cot, _, final = text.rpartition("####")
    return {"question": hf["question"], "answer": final.strip(), "cot": cot.strip(), "id": f"gsm8k-test-{index}"}


def humaneval_row(hf: dict) -> dict:
    """openai/openai_humaneval row -> AFlow row (same fields)."""
    return {k: hf[k] for k in ("task_id", "prompt", "entry_point", "canonical_solution", "test")}


def mbpp_row(hf: dict) -> dict:
    """google-research-datasets/mbpp ``sanitized`` row -> AFlow row.

    AFlow adds the function's ``def`` line to the prompt, names the entry point (the
    function defined in ``code`` that the first test calls) and wraps ``test_list`` in
    a ``check()`` function.
    """
    code = str(hf["code"])
    tests = [str(t) for t in hf["test_list"]]
    defs = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", code, re.M)
    called = [d for d in defs if re.search(rf"\b{re.escape(d)}\s*\(", tests[0] if tests else "")]
    entry = called[0] if called else (defs[-1] if defs else "")
    lines = code.split("\n")
    def_line = next((ln for ln in lines if re.match(rf"def\s+{re.escape(entry)}\s*\(", ln)), "")
    imports = "\n".join(ln for ln in lines if re.match(r"(import|from)\s", ln))
    return {
        "source_file": hf.get("source_file", ""),
        "task_id": hf["task_id"],
        "prompt": f"{hf['prompt']}\n{imports}\n{def_line}",
        "code": code,
        "test_imports": list(hf.get("test_imports") or []),
        "test_list": tests,
        "entry_point": entry,
        "test": "def check():\n" + "".join(f"    {t}\n" for t in tests),
    }


def hotpotqa_row(hf: dict) -> dict:
    """hotpotqa/hotpot_qa (distractor) row -> AFlow row (lists instead of columns)."""
    sf, ctx = hf["supporting_facts"], hf["context"]
    return {
        "_id": hf["id"],
        "answer": hf["answer"],
        "question": hf["question"],
        "supporting_facts": [[t, int(i)] for t, i in zip(sf["title"], sf["sent_id"])],
        "context": [[t, list(s)] for t, s in zip(ctx["title"], ctx["sentences"])],
        "type": hf.get("type"),
        "level": hf.get("level"),
    }


def math_key(problem: str) -> str:
    return hashlib.sha256(problem.encode("utf-8")).hexdigest()[:16]


def math_row(hf: dict) -> dict:
    return {k: hf[k] for k in ("problem", "level", "type", "solution")}


# ------------------------------------------------------------------- fetching


def _select(rows_by_key: dict, keys: list, name: str, split: str) -> list[dict]:
    missing = [k for k in keys if k not in rows_by_key]
    if missing:
        raise BenchmarkError(
            f"{len(missing)} problems of AFlow's {name} {split} split are not in the hub's dataset "
            f"(e.g. {missing[0]!r})",
            f"the upstream dataset changed; copy AFlow's file instead: aflowctl data fetch {name} --from PATH",
        )
    return [rows_by_key[k] for k in keys]


def _load(path: str, config: str | None, split: str):
    import datasets

    try:
        return datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing dataset...
        raise BenchmarkError(
            f"could not download {path} from the Hugging Face hub ({type(exc).__name__})",
            "check the network, or copy AFlow's files: aflowctl data fetch NAME --from PATH",
        ) from None


def _gsm8k(split: str):
    keys = _ids("gsm8k", split)
    ds = _load("openai/gsm8k", "main", "test")
    rows = {i: gsm8k_row(r, i) for i, r in enumerate(ds)}
    return _select(rows, keys, "gsm8k", split), "hf://openai/gsm8k (main, test)"


def _humaneval(split: str):
    keys = _ids("humaneval", split)
    ds = _load("openai/openai_humaneval", None, "test")
    rows = {r["task_id"]: humaneval_row(r) for r in ds}
    return _select(rows, keys, "humaneval", split), "hf://openai/openai_humaneval (test)"


def _mbpp(split: str):
    keys = _ids("mbpp", split)
    rows = {}
    for part in ("train", "test", "validation", "prompt"):
        for r in _load("google-research-datasets/mbpp", "sanitized", part):
            rows[r["task_id"]] = mbpp_row(r)
    return _select(rows, keys, "mbpp", split), "hf://google-research-datasets/mbpp (sanitized)"


def _hotpotqa(split: str):
    keys = _ids("hotpotqa", split)
    ds = _load("hotpotqa/hotpot_qa", "distractor", "validation")
    rows = {r["id"]: hotpotqa_row(r) for r in ds}
    return _select(rows, keys, "hotpotqa", split), "hf://hotpotqa/hotpot_qa (distractor, validation)"


def _math(split: str):
    keys = _ids("math", split)
    rows = {}
    for config in MATH_CONFIGS:
        for r in _load("EleutherAI/hendrycks_math", config, "test"):
            rows[math_key(r["problem"])] = math_row(r)
    return _select(rows, keys, "math", split), "hf://EleutherAI/hendrycks_math (test)"


FETCHERS: dict[str, Callable[[str], tuple[list[dict], str]]] = {
    "gsm8k": _gsm8k,
    "humaneval": _humaneval,
    "mbpp": _mbpp,
    "hotpotqa": _hotpotqa,
    "math": _math,
}
