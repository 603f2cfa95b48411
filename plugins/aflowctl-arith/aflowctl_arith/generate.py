"""Deterministic generator of the ``arith`` problems (run as a module to rebuild the data).

Problems are small additions and subtractions, some written as expressions and some
as one-sentence word problems, drawn from ``random.Random(seed)``: the same seed
gives the same file on every machine and Python version (only ``randint``/``choice``
on a seeded generator are used).

    python -m aflowctl_arith.generate            # rewrites data/arith_{validate,test}.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = {"validate": (40, 20241021), "test": (100, 20250123)}

_NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
_ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "coins", "shells", "cards"]


_KINDS = ["add", "add", "add", "word_add", "word_add", "sub", "sub", "word_sub", "add2"]


def _expr(rng: random.Random) -> tuple[str, str, int, str]:
    """(question, expression, answer, kind) for one problem.

    Kinds, by weight: single-digit additions (3/9, "What is 3 + 5?"), the same as a
    word problem (2/9), single-digit subtractions with a non-negative result (2/9),
    the same as a word problem (1/9), and a two-digit plus a one-digit number (1/9).
    """
    kind = rng.choice(_KINDS)
    if kind in ("add", "word_add"):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        op, ans = "+", a + b
    elif kind in ("sub", "word_sub"):
        a = rng.randint(2, 9)
        b = rng.randint(1, a - 1)
        op, ans = "-", a - b
    else:  # add2
        a, b = rng.randint(10, 40), rng.randint(1, 9)
        op, ans = "+", a + b
    expr = f"{a} {op} {b}"
    if not kind.startswith("word_"):
        return f"What is {expr}?", expr, ans, kind
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    if op == "+":
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
    else:
        q = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?"
    return q, expr, ans, kind


def generate(split: str, n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """``n`` distinct problems; questions in ``exclude`` (another split's) are skipped."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude or ())
    while len(rows) < n:
        q, expr, ans, kind = _expr(rng)
        if q in seen:
            continue
        seen.add(q)
        rows.append({"id": f"arith-{split}-{len(rows):03d}", "question": q, "answer": str(ans),
                     "expression": expr, "kind": kind})
    return rows


def write_all(folder: Path = DATA_DIR) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out, used = {}, set()
    for split, (n, seed) in SPLITS.items():  # validate first; test never repeats it
        rows = generate(split, n, seed, used)
        used |= {r["question"] for r in rows}
        path = folder / f"arith_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        out[split] = path
    return out


if __name__ == "__main__":  # pragma: no cover
    for split, path in write_all().items():
        print(split, path)
