"""Trainer checkpoints: atomic, checksummed, resumable bit for bit.

Layout of ``<run dir>/checkpoints/``::

    step-00000012/
        model/              the policy as an HF directory (save_pretrained: config,
                            safetensors weights or the LoRA adapter, tokenizer)
        optimizer.pt        AdamW state (torch.save)
        rng.pt              python / numpy / torch / CUDA RNG states, as tensors and
                            plain values (torch.load(weights_only=True) accepts them)
        trainer_state.json  counters (epoch, update, groups consumed, LR step),
                            the config and its hash, the base model's identity
        MANIFEST.json       sha256 and size of every other file
    latest                  the name of the newest complete checkpoint

A checkpoint is written into a temporary directory next to its final place and
renamed into place with ``os.replace``; ``latest`` is replaced the same way. The
last ``keep`` checkpoints are kept. Loading verifies every checksum: a truncated or
corrupt checkpoint is refused (``fallback=True`` goes back to the previous good one).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, cast

from aflowctl.errors import CheckpointError

MANIFEST = "MANIFEST.json"
STATE = "trainer_state.json"
LATEST = "latest"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(bufsize)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- RNG states


def capture_rng() -> dict[str, Any]:
    """All RNG states as tensors and plain values (loadable with weights_only=True)."""
    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    np_state = cast(tuple, np.random.get_state(legacy=True))  # (kind, keys, pos, has_gauss, cached_gauss)
    out: dict[str, Any] = {
        "python_version": int(version),
        "python_mt": torch.tensor(mt, dtype=torch.int64),
        "python_gauss": None if gauss is None else float(gauss),
        "numpy_kind": str(np_state[0]),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rng(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    mt = tuple(int(x) for x in state["python_mt"].tolist())
    random.setstate((state["python_version"], mt, state["python_gauss"]))
    np.random.set_state(
        (
            state["numpy_kind"],
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- saving


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    state: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def optimizer_path(self) -> Path:
        return self.path / "optimizer.pt"

    @property
    def rng_path(self) -> Path:
        return self.path / "rng.pt"

    def load_optimizer_state(self, map_location: str = "cpu") -> dict:
        import torch

        return torch.load(self.optimizer_path, map_location=map_location, weights_only=True)

    def load_rng_state(self) -> dict:
        import torch

        return torch.load(self.rng_path, map_location="cpu", weights_only=True)


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model,
    tokenizer,
    optimizer,
    state: dict[str, Any],
    keep: int = 3,
    store=None,
    run_id: Optional[str] = None,
    metrics: Optional[dict] = None,
) -> CheckpointInfo:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune old ones.

    ``state`` holds the trainer counters, config, config hash and model identity
    (JSON-serialisable). Adds a ``checkpoints`` row when a store is given.
    """
    import torch

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        model.save_pretrained(str(tmp / "model"), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "model"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(capture_rng(), tmp / "rng.pt")
        full_state = dict(state, format=FORMAT_VERSION, step=step)
        (tmp / STATE).write_text(json.dumps(full_state, indent=2, sort_keys=True, default=str))
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(tmp).as_posix()
                files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT_VERSION, "step": step, "files": files}, indent=2))
        _fsync_dir(tmp)
        if final.exists():  # a checkpoint of this step from a run that was killed after writing it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_latest(root, final.name)
    manifest_sha = sha256_file(final / MANIFEST)
    removed = _prune(root, keep)
    if store is not None and run_id is not None:
        from sqlmodel import col, delete

        from aflowctl.store import Checkpoint, utcnow

        def _rows(session):
            session.exec(delete(Checkpoint).where(col(Checkpoint.run_id) == run_id, col(Checkpoint.step) == step))
            if removed:
                gone = col(Checkpoint.path).in_([str(p) for p in removed])
                session.exec(delete(Checkpoint).where(col(Checkpoint.run_id) == run_id, gone))
            session.add(
                Checkpoint(
                    run_id=run_id,
                    step=step,
                    path=str(final),
                    sha256=manifest_sha,
                    metrics_json=json.dumps(metrics or {}, default=str),
                    created_at=utcnow(),
                )
            )

        store.transact(_rows)
    return CheckpointInfo(final, step, full_state)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".latest.tmp{os.getpid()}"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / LATEST)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete-looking checkpoint directories, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _prune(root: Path, keep: int) -> list[Path]:
    ckpts = list_checkpoints(root.parent)
    removed = []
    for p in ckpts[: max(0, len(ckpts) - keep)]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    for p in root.glob(".tmp-*"):  # leftovers of a killed writer (not ours: ours is renamed already)
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)
    return removed


# --------------------------------------------------------------------------- loading


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file against MANIFEST.json; return the trainer state or raise CheckpointError."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} does not exist", "list the run's checkpoints with 'aflowctl inspect training RUN_ID'"
        )
    man_p = path / MANIFEST
    try:
        manifest = json.loads(man_p.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"checkpoint {path} is incomplete (no readable {MANIFEST})",
            "it was not finished or was damaged; resume with --fallback to use the previous checkpoint",
        ) from None
    for rel, meta in files.items():
        p = path / rel
        if not p.is_file():
            raise CheckpointError(
                f"checkpoint {path} is missing {rel}", "resume with --fallback to use the previous checkpoint"
            )
        if p.stat().st_size != meta["size"]:
            raise CheckpointError(
                f"checkpoint {path} is truncated: {rel} has {p.stat().st_size} bytes, expected {meta['size']}",
                "resume with --fallback to use the previous checkpoint",
            )
        if sha256_file(p) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: the checksum of {rel} does not match",
                "resume with --fallback to use the previous checkpoint",
            )
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"checkpoint {path} has an unreadable {STATE}", "resume with --fallback") from None
    return state


def load_checkpoint(path: Path) -> CheckpointInfo:
    """A verified checkpoint directory."""
    state = verify_checkpoint(path)
    return CheckpointInfo(Path(path), int(state["step"]), state)


def latest_checkpoint(run_dir: Path, *, fallback: bool = False) -> Optional[CheckpointInfo]:
    """The newest checkpoint of a run (None when there is none), verified.

    The ``latest`` pointer names it (the newest complete directory when the pointer is
    missing). A corrupt one raises CheckpointError, unless ``fallback`` is set: then
    the previous good checkpoint is used.
    """
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return None
    root = checkpoints_dir(run_dir)
    pointer = root / LATEST
    candidates = list(reversed(ckpts))
    if pointer.is_file():
        name = pointer.read_text().strip()
        named = [p for p in candidates if p.name == name]
        if named:
            idx = candidates.index(named[0])
            candidates = candidates[idx:]
    first_error: Optional[CheckpointError] = None
    for p in candidates:
        try:
            return load_checkpoint(p)
        except CheckpointError as exc:
            if not fallback:
                older = [c.name for c in candidates if c != p]
                hint = (
                    f"resume with --fallback to use the previous checkpoint ({older[0]})"
                    if older
                    else "no older checkpoint exists: start a new run"
                )
                raise CheckpointError(exc.message, hint) from None
            first_error = first_error or exc
    raise CheckpointError(
        f"no intact checkpoint in {root} ({first_error.message if first_error else 'none'})", "start a new run"
    )


def compatibility_problems(
    saved: dict[str, Any], *, config: dict[str, Any], model_fingerprint: str, lora: bool
) -> list[str]:
    """What differs between a checkpoint and the run about to use it (empty: compatible)."""
    from aflowctl.config import conflicting_keys

    problems = []
    saved_model = saved.get("model", {})
    if saved_model.get("fingerprint") != model_fingerprint:
        problems.append(
            f"base model differs (checkpoint: {saved_model.get('path')} [{saved_model.get('fingerprint')}], "
            f"now: [{model_fingerprint}])"
        )
    if bool(saved_model.get("lora")) != bool(lora):
        problems.append(f"train.lora differs (checkpoint: {saved_model.get('lora')}, now: {lora})")
    keys = conflicting_keys(saved.get("config", {}), config)
    if keys:
        problems.append("config differs in " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
    return problems
