"""The benchmark contract, and a base class that implements the data part of it.

A benchmark is any object with

* ``name`` (lower case, used on the command line and in file names) and ``kind``
  (``"math"``, ``"qa"`` or ``"code"``);
* ``load(split) -> list[dict]``: the problems of a split, rows of AFlow's JSONL;
* ``inputs(problem) -> tuple``: the arguments a workflow is called with after
  ``self``: ``(question,)`` for math and QA, ``(prompt, entry_point)`` for code;
* ``score(prediction, problem) -> float`` in ``[0, 1]``, ``prediction`` being the
  workflow's raw answer (for code benchmarks, the solution code);
* ``problem_id(problem, index) -> str``, ``expected(problem) -> str`` (the gold
  answer shown in logs) and, for code benchmarks, ``public_tests(problem) ->
  list[str]``: the assert lines the workflow's Test operator may see (never the
  evaluation test).

Subclass :class:`Benchmark` and set ``name``, ``kind`` and ``required_fields`` to get
``load`` with the standard search order (see :mod:`aflowctl.benchmarks.data`),
row validation, and ``aflowctl data list/fetch`` support for free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Optional

from aflowctl.benchmarks import data
from aflowctl.errors import BenchmarkError

KINDS = ("math", "qa", "code")


class Benchmark:
    """Base class for benchmarks whose splits are AFlow-style JSONL files."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    #: fields every row must have (checked when a split is loaded or fetched)
    required_fields: ClassVar[tuple[str, ...]] = ()
    #: the row field holding the problem's own id, if any
    id_field: ClassVar[Optional[str]] = None
    #: splits this benchmark knows (``sample`` is the small shipped one)
    splits: ClassVar[tuple[str, ...]] = ("validate", "test", "sample")
    #: where this benchmark's shipped files are (searched last)
    package_dir: Optional[Path] = data.PACKAGE_SAMPLES
    #: where the shipped files came from (shown by ``aflowctl data list``)
    data_source: Optional[str] = (
        "AFlow's data (MetaGPT examples/aflow/data @2d1d7ca), see aflowctl/benchmarks/sample/SOURCE.md"
    )

    def __init__(self) -> None:
        self._cache: dict[str, list[dict]] = {}

    # ----------------------------------------------------------------- data

    def all_splits(self) -> tuple[str, ...]:
        return tuple(self.splits)

    def split_path(self, split: str) -> Path:
        """The file that holds ``split`` (first in the search order)."""
        if split not in self.all_splits():
            raise BenchmarkError(
                f"benchmark {self.name!r} has no split {split!r}",
                f"choose one of: {', '.join(self.all_splits())}",
            )
        found = data.find_file(data.file_name(self.name, split), self.package_dir)
        if found is None:
            looked = ", ".join(str(d) for d, _ in data.search_dirs(self.package_dir))
            raise BenchmarkError(
                f"the {split} split of {self.name} is not present (looked for "
                f"{data.file_name(self.name, split)} in {looked})",
                f"fetch it with `aflowctl data fetch {self.name} --split {split}` "
                f"(add --from PATH to copy AFlow's data folder when offline)",
            )
        return found[0]

    def load(self, split: str) -> list[dict]:
        """The problems of ``split`` (validated; cached per instance and file)."""
        path = self.split_path(split)
        key = f"{split}:{path}"
        if key not in self._cache:
            rows = data.read_jsonl(path)
            self.validate_rows(rows, split, str(path))
            self._cache[key] = rows
        return list(self._cache[key])

    def validate_rows(self, rows: list[dict], split: str, where: str) -> None:
        """Raise :class:`BenchmarkError` unless ``rows`` look like this benchmark's."""
        if not rows:
            raise BenchmarkError(f"{where} holds no problems", f"fetch the {split} split of {self.name} again")
        for i, row in enumerate(rows, 1):
            missing = [f for f in self.required_fields if f not in row]
            if missing:
                raise BenchmarkError(
                    f"{where}: problem {i} lacks field(s) {', '.join(missing)} expected for {self.name}",
                    f"is this really a {self.name} file in AFlow's format?",
                )

    # -------------------------------------------------------------- problems

    def problem_id(self, problem: dict, index: int) -> str:
        """The problem's own id when it has one, else its index in the split."""
        if self.id_field and problem.get(self.id_field) not in (None, ""):
            return str(problem[self.id_field])
        return str(index)

    def inputs(self, problem: dict) -> tuple:
        raise NotImplementedError

    def expected(self, problem: dict) -> str:
        raise NotImplementedError

    def score(self, prediction: Any, problem: dict) -> float:
        raise NotImplementedError

    def public_tests(self, problem: dict) -> list[str]:
        """Assert lines the workflow may see (code benchmarks); none for others."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.kind})>"
