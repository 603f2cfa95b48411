"""Where benchmark splits live, and how they get there.

A split is a JSONL file named ``<benchmark>_<split>.jsonl`` (AFlow's names, e.g.
``gsm8k_validate.jsonl``). It is looked up, in order, in

1. :func:`aflowctl.paths.data_dir` (where ``aflowctl data fetch`` puts files),
2. each folder of ``AFLOWCTL_DATA_PATH`` (``os.pathsep``-separated),
3. the folder the benchmark ships its own data in (the built-ins ship only a small
   ``sample`` split; a plugin may ship whole splits).

A ``sample`` split is never used in place of ``validate`` or ``test``.
``data_dir()/SOURCES.json`` records where each fetched file came from.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from aflowctl import paths
from aflowctl.errors import BenchmarkError

MANIFEST = "SOURCES.json"
PACKAGE_SAMPLES = Path(__file__).resolve().parent / "sample"


def file_name(name: str, split: str) -> str:
    return f"{name}_{split}.jsonl"


def search_dirs(package_dir: Optional[Path] = None) -> list[tuple[Path, str]]:
    """Folders searched for split files, each with a label saying where it is."""
    dirs: list[tuple[Path, str]] = [(paths.data_dir(), "data dir")]
    for entry in os.environ.get("AFLOWCTL_DATA_PATH", "").split(os.pathsep):
        if entry.strip():
            dirs.append((Path(entry.strip()).expanduser(), "AFLOWCTL_DATA_PATH"))
    if package_dir is not None:
        dirs.append((Path(package_dir), "shipped with the package"))
    return dirs


def find_file(filename: str, package_dir: Optional[Path] = None) -> Optional[tuple[Path, str]]:
    """The first ``filename`` found in :func:`search_dirs`, with its origin label."""
    for folder, origin in search_dirs(package_dir):
        candidate = folder / filename
        if candidate.is_file():
            return candidate, origin
    return None


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a malformed line is a :class:`BenchmarkError` naming it."""
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BenchmarkError(
                        f"{path}:{lineno} is not valid JSON ({exc.msg})",
                        "fix or re-fetch the file with `aflowctl data fetch`",
                    ) from None
                if not isinstance(row, dict):
                    raise BenchmarkError(f"{path}:{lineno} is not a JSON object", "each line must be one problem")
                rows.append(row)
    except OSError as exc:
        raise BenchmarkError(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from None
    return rows


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


# ----------------------------------------------------------------------- manifest


def _manifest_path() -> Path:
    return paths.data_dir() / MANIFEST


def read_manifest() -> dict[str, dict]:
    p = _manifest_path()
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(manifest: dict[str, dict]) -> None:
    _atomic_write_text(_manifest_path(), json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -------------------------------------------------------------------------- list


@dataclass
class SplitInfo:
    benchmark: str
    split: str
    present: bool
    count: Optional[int] = None
    sha256: Optional[str] = None
    path: Optional[str] = None
    origin: Optional[str] = None
    source: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_info(benchmark, split: str) -> SplitInfo:
    """What is known about one split of ``benchmark`` (a Benchmark object)."""
    found = find_file(file_name(benchmark.name, split), getattr(benchmark, "package_dir", None))
    if found is None:
        return SplitInfo(benchmark.name, split, False)
    path, origin = found
    source = None
    if origin == "data dir":
        source = read_manifest().get(path.name, {}).get("source")
    elif origin == "shipped with the package":
        source = getattr(benchmark, "data_source", None)
    return SplitInfo(benchmark.name, split, True, count_lines(path), sha256(path), str(path), origin, source)


def list_splits(benchmarks: Iterable) -> list[SplitInfo]:
    """Every split each benchmark knows (validate, test, sample, public tests)."""
    out = []
    for b in benchmarks:
        for split in b.all_splits():
            info = split_info(b, split)
            if info.present or split in ("validate", "test"):
                out.append(info)
    return out


# ------------------------------------------------------------------------- fetch


@dataclass
class Fetched:
    benchmark: str
    split: str
    path: str
    count: int
    sha256: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def install_rows(benchmark, split: str, rows: list[dict], source: str) -> Fetched:
    """Validate ``rows`` for ``benchmark`` and write them as its ``split`` file."""
    benchmark.validate_rows(rows, split, source)
    target = paths.data_dir() / file_name(benchmark.name, split)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    _atomic_write_text(target, text)
    return _record(benchmark, split, target, source, len(rows))


def _record(benchmark, split: str, target: Path, source: str, count: int) -> Fetched:
    digest = sha256(target)
    manifest = read_manifest()
    manifest[target.name] = {"source": source, "fetched_at": _now(), "sha256": digest, "count": count}
    _write_manifest(manifest)
    return Fetched(benchmark.name, split, str(target), count, digest, source)


def fetch_local(benchmark, source: Path, splits: Optional[list[str]] = None) -> list[Fetched]:
    """Copy ``benchmark``'s split files from a file or folder into the data dir.

    A folder is searched for AFlow's file names (also in ``datasets/`` and
    ``data/datasets/`` below it, AFlow's layout). A single file needs exactly one
    ``--split``, unless its name says which split it is.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise BenchmarkError(f"{source} does not exist", "give a JSONL file or a folder with AFlow's data files")
    wanted = list(splits) if splits else None
    for s in wanted or []:
        if s not in benchmark.all_splits():
            raise BenchmarkError(
                f"benchmark {benchmark.name!r} has no split {s!r}",
                f"choose from: {', '.join(benchmark.all_splits())}",
            )
    plan: list[tuple[str, Path]] = []
    if source.is_file():
        if wanted is None:
            inferred = [s for s in benchmark.all_splits() if source.name == file_name(benchmark.name, s)]
            if not inferred:
                raise BenchmarkError(
                    f"cannot tell which split of {benchmark.name!r} {source.name} holds",
                    "add --split validate (or test)",
                )
            wanted = inferred
        if len(wanted) != 1:
            raise BenchmarkError("one file holds one split", "give exactly one --split with a file")
        plan.append((wanted[0], source))
    else:
        folders = [source, source / "datasets", source / "data" / "datasets", source / "data"]
        for split in wanted or benchmark.all_splits():
            if split == "sample" and wanted is None:
                continue
            name = file_name(benchmark.name, split)
            hit = next((f / name for f in folders if (f / name).is_file()), None)
            if hit is not None:
                plan.append((split, hit))
            elif wanted is not None:
                raise BenchmarkError(
                    f"{file_name(benchmark.name, split)} not found in {source}",
                    "point --from at the folder holding AFlow's data files",
                )
        if not plan:
            raise BenchmarkError(
                f"no {benchmark.name} files ({benchmark.name}_<split>.jsonl) in {source}",
                "point --from at the folder holding AFlow's data files",
            )
    out = []
    for split, path in plan:
        rows = read_jsonl(path)
        benchmark.validate_rows(rows, split, str(path))
        target = paths.data_dir() / file_name(benchmark.name, split)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.resolve() != target.resolve():
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(path, tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        out.append(_record(benchmark, split, target, str(path.resolve()), len(rows)))
    return out


def fetch_hub(benchmark, splits: Optional[list[str]] = None) -> list[Fetched]:
    """Download ``benchmark``'s splits from the Hugging Face hub (needs ``datasets``).

    A benchmark provides ``hub_rows(split) -> (rows, source)`` to support this; the
    built-ins use :mod:`aflowctl.benchmarks.hub`.
    """
    from aflowctl.benchmarks import hub

    fetcher = getattr(benchmark, "hub_rows", None)
    if fetcher is None and type(benchmark).__module__.startswith("aflowctl.benchmarks."):
        fetcher = hub.FETCHERS.get(benchmark.name)
    if fetcher is None:
        shipped = [
            s
            for s in ("validate", "test")
            if s in benchmark.all_splits() and split_info(benchmark, s).origin == "shipped with the package"
        ]
        if shipped and len(shipped) == len([s for s in ("validate", "test") if s in benchmark.all_splits()]):
            raise BenchmarkError(
                f"benchmark {benchmark.name!r} ships its {' and '.join(shipped)} splits with its package: "
                "nothing to fetch",
                f"to use other problems: aflowctl data fetch {benchmark.name} --from FILE --split validate",
            )
        raise BenchmarkError(
            f"benchmark {benchmark.name!r} cannot be fetched from the Hugging Face hub",
            f"fetch it from a local copy: aflowctl data fetch {benchmark.name} --from PATH",
        )
    if splits:
        wanted = list(splits)
    elif benchmark.name in hub.split_ids():
        wanted = [s for s in ("validate", "test") if s in hub.split_ids()[benchmark.name]]
    else:
        wanted = ["validate", "test"]
    for s in wanted:
        if s not in benchmark.all_splits():
            raise BenchmarkError(
                f"benchmark {benchmark.name!r} has no split {s!r}",
                f"choose from: {', '.join(benchmark.all_splits())}",
            )
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE", "") not in (
        "",
        "0",
    ):
        raise BenchmarkError(
            "the Hugging Face hub is switched off here (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set)",
            f"unset it when online, or fetch from a local copy: aflowctl data fetch {benchmark.name} --from PATH",
        )
    try:
        import datasets  # noqa: F401  (optional dependency)
    except ImportError:
        raise BenchmarkError(
            "fetching from the Hugging Face hub needs the `datasets` library, which is not installed",
            f"pip install datasets, or fetch from a local copy: aflowctl data fetch {benchmark.name} --from PATH",
        ) from None
    out = []
    for split in wanted:
        rows, source = fetcher(split)
        out.append(install_rows(benchmark, split, rows, source))
    return out
