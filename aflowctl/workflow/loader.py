"""Workflow sources: AFlow import rewriting, canonical hash, static checks, loading.

A workflow is a pair of Python sources, ``graph.py`` (``class Workflow`` with
``__init__(self, name, llm_config, dataset)`` and ``async __call__(self, problem)``,
or ``(self, problem, entry_point)`` for code benchmarks, returning ``(answer, cost)``)
and ``prompt.py`` (constants used as ``prompt_custom.NAME``).

Everything here except :func:`instantiate` only parses (``ast``); nothing is
executed, so it is safe in the CLI process. :func:`instantiate` executes the
sources into fresh module objects (no files imported by path, no ``sys.path``
edits) and is only ever called inside worker processes.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import itertools
import linecache
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from aflowctl.errors import NotFoundError, WorkflowError

# AFlow's import lines are rewritten by the one AFlow converter (both directions live there)
from aflowctl.workflow.aflow_io import API_MODULE
from aflowctl.workflow.aflow_io import from_aflow_source as rewrite_imports
from aflowctl.workflow.untrusted import ALLOWED_IMPORTS as ALLOWED_IMPORTS  # re-exported
from aflowctl.workflow.untrusted import FORBIDDEN_ATTRS as FORBIDDEN_ATTRS
from aflowctl.workflow.untrusted import FORBIDDEN_NAMES as FORBIDDEN_NAMES
from aflowctl.workflow.untrusted import check_untrusted


@dataclass(frozen=True)
class WorkflowSource:
    """The two sources of a workflow (``graph.py`` and ``prompt.py``) as text."""

    graph: str
    prompt: str = ""

    def rewritten(self) -> WorkflowSource:
        """The same workflow with AFlow's import lines rewritten (idempotent)."""
        return WorkflowSource(rewrite_imports(self.graph), rewrite_imports(self.prompt))


# --------------------------------------------------------------------------- hashing


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _parse(source: str, filename: str) -> ast.Module:
    try:
        return ast.parse(source or "", filename=filename)
    except SyntaxError as exc:
        line = f" at line {exc.lineno}" if exc.lineno else ""
        raise WorkflowError(
            f"{filename}: syntax error{line}: {exc.msg}",
            f"fix {filename} (python -m py_compile {filename} shows the same error)",
        ) from None


def canonical_hash(src: WorkflowSource) -> str:
    """SHA-256 (hex) of the normalised AST of both sources.

    Imports are rewritten first (an AFlow original and its rewritten form hash
    equal); formatting, comments and docstrings do not change the hash.
    """
    parts = []
    for name, text in (("graph.py", src.graph), ("prompt.py", src.prompt)):
        tree = _strip_docstrings(_parse(rewrite_imports(text), name))
        parts.append(ast.dump(tree, annotate_fields=True, include_attributes=False))
    return hashlib.sha256(("graph\0" + parts[0] + "\0prompt\0" + parts[1]).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- checks


def _defined_names(tree: ast.Module) -> Optional[set[str]]:
    """Top-level names of a module, or None when they cannot be known statically."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if node.name == "__getattr__":
                return None
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.name == "*":
                    return None
                names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.For, ast.While, ast.With)):
            for n in ast.walk(node):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    names.add(n.id)
    return names


def _bound_api_names(tree: ast.Module) -> dict[str, str]:
    """local name -> api name, for ``from aflowctl.workflow.api import x as y``."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == API_MODULE and not node.level:
            for a in node.names:
                out[a.asname or a.name] = a.name
    return out


def check_source(src: WorkflowSource, *, known_operators: Optional[Iterable[str]] = None) -> None:
    """Raise :class:`WorkflowError` (one line) unless the workflow looks loadable.

    AST only, nothing runs: syntax of both files, what generated code may not do
    (:func:`check_untrusted`: imports, escapes), a top-level ``class Workflow``
    with an ``async def __call__``, an ``__init__`` taking ``(name, llm_config,
    dataset)``, every ``prompt_custom.NAME`` defined in prompt.py, and (when
    ``known_operators`` is given) every ``operator.NAME`` a known operator.
    """
    graph = _parse(rewrite_imports(src.graph), "graph.py")
    prompt = _parse(rewrite_imports(src.prompt), "prompt.py")
    check_untrusted(graph, "graph.py")
    check_untrusted(prompt, "prompt.py")
    cls = next((n for n in graph.body if isinstance(n, ast.ClassDef) and n.name == "Workflow"), None)
    if cls is None:
        raise WorkflowError(
            "graph.py defines no Workflow class",
            "define `class Workflow:` at the top level of graph.py (see docs/workflows.md)",
        )
    methods = {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    call = methods.get("__call__")
    if call is None:
        raise WorkflowError(
            f"graph.py line {cls.lineno}: class Workflow has no async __call__ method",
            "add `async def __call__(self, problem):` returning (answer, cost)",
        )
    if not isinstance(call, ast.AsyncFunctionDef):
        raise WorkflowError(
            f"graph.py line {call.lineno}: Workflow.__call__ must be async",
            "write `async def __call__(self, problem):`",
        )
    init = methods.get("__init__")
    if init is not None:
        a = init.args
        positional = len(a.posonlyargs) + len(a.args)
        if positional < 4 and a.vararg is None and not (a.kwarg is not None or len(a.kwonlyargs) >= 3):
            raise WorkflowError(
                f"graph.py line {init.lineno}: Workflow.__init__ must accept (name, llm_config, dataset)",
                "write `def __init__(self, name, llm_config, dataset):`",
            )
    bound = _bound_api_names(graph)
    prompt_aliases = {local for local, api in bound.items() if api == "prompt_custom"} or {"prompt_custom"}
    operator_aliases = {local for local, api in bound.items() if api == "operator"}
    defined = _defined_names(prompt)
    known = set(known_operators) if known_operators is not None else None
    for node in ast.walk(graph):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
            continue
        base = node.value.id
        if base in prompt_aliases and defined is not None and node.attr not in defined:
            raise WorkflowError(
                f"graph.py line {node.lineno} uses {base}.{node.attr}, which prompt.py does not define",
                f'define {node.attr} = "..." in prompt.py or remove its use',
            )
        if base in operator_aliases and known is not None and node.attr not in known:
            raise WorkflowError(
                f"graph.py line {node.lineno} uses operator.{node.attr}, which is not a known operator",
                f"use one of: {', '.join(sorted(known))}",
            )


# --------------------------------------------------------------------------- folders


def load_folder(path: str | Path, *, check: bool = True) -> WorkflowSource:
    """Read ``graph.py`` and ``prompt.py`` from a folder (an AFlow ``round_N`` folder
    too; a path to graph.py itself is accepted) with imports rewritten."""
    p = Path(path).expanduser()
    if p.is_file() and p.name == "graph.py":
        p = p.parent
    if not p.exists():
        raise NotFoundError(f"workflow folder {p} does not exist", "pass a folder holding graph.py and prompt.py")
    if not p.is_dir():
        raise WorkflowError(f"{p} is not a workflow folder", "pass a folder holding graph.py and prompt.py")
    graph_path = p / "graph.py"
    if not graph_path.is_file():
        raise WorkflowError(f"{p} has no graph.py", "a workflow folder holds graph.py (class Workflow) and prompt.py")
    try:
        graph = graph_path.read_text(encoding="utf-8")
        prompt_path = p / "prompt.py"
        prompt = prompt_path.read_text(encoding="utf-8") if prompt_path.is_file() else ""
    except UnicodeDecodeError:
        raise WorkflowError(f"{p}: graph.py or prompt.py is not UTF-8 text", "save the files as UTF-8") from None
    src = WorkflowSource(graph=rewrite_imports(graph), prompt=rewrite_imports(prompt))
    if check:
        try:
            check_source(src)
        except WorkflowError as exc:  # say which folder
            raise WorkflowError(f"{p}/{exc.message}", exc.hint) from None
    return src


def save_folder(src: WorkflowSource, path: str | Path) -> Path:
    """Write ``graph.py`` and ``prompt.py`` into ``path`` (created if needed)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    (p / "graph.py").write_text(src.graph, encoding="utf-8")
    (p / "prompt.py").write_text(src.prompt, encoding="utf-8")
    return p


# --------------------------------------------------------------------------- instantiate

_counter = itertools.count(1)


def _make_import(api_ns: types.ModuleType):
    real_import = builtins.__import__

    def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and name == API_MODULE and fromlist:
            return api_ns
        return real_import(name, globals, locals, fromlist, level)

    return _import


def _load_error(exc: BaseException, filename: str, what: str) -> WorkflowError:
    import traceback

    line = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == filename:
            line = f" (line {frame.lineno})"
            break
    msg = f"{type(exc).__name__}: {exc}".strip().rstrip(":").splitlines()[0][:300] if str(exc) else type(exc).__name__
    return WorkflowError(f"{what}: {msg}{line}", "fix the workflow code")


_compiled: dict[tuple, type] = {}
_COMPILED_MAX = 64


def compile_sources(src: WorkflowSource, name: str = "workflow") -> type:
    """The Workflow class of ``src``: both sources executed into fresh module objects.

    Compiled once per process for the same sources (and set of operators): a worker
    that builds one workflow per problem pays the parse and exec once.
    """
    from aflowctl.workflow import registry

    key = (src.graph, src.prompt, tuple(registry.names()))
    cls = _compiled.get(key)
    if cls is None:
        cls = _compile(src)
        if len(_compiled) >= _COMPILED_MAX:
            _compiled.pop(next(iter(_compiled)))
        _compiled[key] = cls
    return cls


def _compile(src: WorkflowSource) -> type:
    from aflowctl.workflow import api

    check_source(src)
    graph = rewrite_imports(src.graph)
    prompt = rewrite_imports(src.prompt)
    tag = f"{canonical_hash(src)[:12]}"
    seq = next(_counter)
    prompt_file = f"<workflow {tag}>/prompt.py"
    graph_file = f"<workflow {tag}>/graph.py"
    for fname, text in ((prompt_file, prompt), (graph_file, graph)):
        linecache.cache[fname] = (len(text), None, text.splitlines(keepends=True), fname)
    prompt_mod = types.ModuleType(f"aflowctl_workflow_{seq}_prompt")
    prompt_mod.__file__ = prompt_file
    try:
        exec(compile(prompt, prompt_file, "exec"), prompt_mod.__dict__)
    except Exception as exc:  # noqa: BLE001 - user code
        raise _load_error(exc, prompt_file, "prompt.py failed to load") from None
    ns = api.namespace(prompt_mod)
    graph_mod = types.ModuleType(f"aflowctl_workflow_{seq}_graph")
    graph_mod.__file__ = graph_file
    b = dict(vars(builtins))
    b["__import__"] = _make_import(ns)
    graph_mod.__dict__["__builtins__"] = b
    try:
        exec(compile(graph, graph_file, "exec"), graph_mod.__dict__)
    except Exception as exc:  # noqa: BLE001 - user code
        raise _load_error(exc, graph_file, "graph.py failed to load") from None
    cls = graph_mod.__dict__.get("Workflow")
    if not isinstance(cls, type):
        raise WorkflowError("graph.py: Workflow is not a class after loading", "define `class Workflow:` in graph.py")
    return cls


def instantiate(src: WorkflowSource, name: str, llm_config: Any, dataset: Any) -> Any:
    """Build the workflow object: ``Workflow(name=name, llm_config=llm_config, dataset=dataset)``.

    Runs the workflow's code: call it only inside a worker process. A dict
    ``llm_config`` (see :func:`aflowctl.workflow.api.executor_config`) gets
    ``dataset`` filled in when it lacks one, so operators know the benchmark.
    """
    from aflowctl.errors import AflowctlError

    cls = compile_sources(src, name)
    if isinstance(llm_config, dict) and not llm_config.get("dataset") and dataset is not None:
        llm_config = {**llm_config, "dataset": str(dataset)}
    try:
        return cls(name=name, llm_config=llm_config, dataset=dataset)
    except AflowctlError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code
        raise _load_error(exc, f"<workflow {canonical_hash(src)[:12]}>/graph.py", "Workflow(...) failed") from None
