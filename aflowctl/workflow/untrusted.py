"""The static check of untrusted workflow code (AST only, nothing runs): which imports,
builtins and attributes generated ``graph.py``/``prompt.py`` may use. A first line of
defence; workflow code also runs sandboxed (docs/sandbox.md)."""

from __future__ import annotations

import ast

from aflowctl.errors import WorkflowError
from aflowctl.workflow.aflow_io import API_MODULE

#: standard-library modules a workflow may import (besides ``aflowctl.workflow.api``)
ALLOWED_IMPORTS = frozenset(
    {
        "__future__",
        "re",
        "math",
        "cmath",
        "json",
        "asyncio",
        "typing",
        "collections",
        "itertools",
        "functools",
        "random",
        "string",
        "dataclasses",
        "statistics",
        "enum",
        "abc",
        "copy",
        "heapq",
        "bisect",
        "fractions",
        "decimal",
        "numbers",
        "textwrap",
        "difflib",
        "datetime",
        "operator",
        "unicodedata",
    }
)
#: builtins that reach outside the workflow API (code execution, files, introspection)
FORBIDDEN_NAMES = frozenset(
    {
        "__import__",
        "eval",
        "exec",
        "compile",
        "open",
        "globals",
        "locals",
        "vars",
        "breakpoint",
        "input",
        "memoryview",
        "__builtins__",
        "__loader__",
        "__spec__",
        "help",
        "exit",
        "quit",
    }
)
#: attributes that walk from an object to frames, code, globals or the interpreter
FORBIDDEN_ATTRS = frozenset(
    {
        "gi_frame",
        "gi_code",
        "cr_frame",
        "cr_code",
        "ag_frame",
        "ag_code",
        "f_globals",
        "f_locals",
        "f_back",
        "f_builtins",
        "f_code",
        "tb_frame",
        "tb_next",
        "co_code",
        "func_globals",
        "mro",
        # modules reachable through allowed ones (typing.sys, asyncio.subprocess...) and their escapes
        "sys",
        "os",
        "subprocess",
        "socket",
        "builtins",
        "modules",
        "system",
        "popen",
        "spawn",
        "create_subprocess_exec",
        "create_subprocess_shell",
        "subprocess_exec",
        "subprocess_shell",
        "open_connection",
        "open_unix_connection",
        "start_server",
        "start_unix_server",
        "create_connection",
        "create_unix_connection",
        "create_datagram_endpoint",
        "create_server",
        "sock_connect",
        "connect_accepted_socket",
        # helpers that read attributes by a dotted name given as a string
        "attrgetter",
        "methodcaller",
    }
)
_ALLOWED_DUNDERS = frozenset({"__init__", "__call__", "__name__", "__doc__"})
_ATTR_FUNCS = frozenset({"getattr", "setattr", "delattr", "hasattr"})


def _dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _reads_fields(func: ast.AST) -> bool:
    """``"{0._os.environ}".format(m)``: a constant format string whose fields walk attributes or items."""
    if not (
        isinstance(func, ast.Attribute)
        and func.attr in ("format", "format_map")
        and isinstance(func.value, ast.Constant)
        and isinstance(func.value.value, str)
    ):
        return False
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(func.value.value) if f]
    except ValueError:
        return False
    return any("." in f or "[" in f for f in fields)


def _refuse(filename: str, node: ast.AST, what: str) -> WorkflowError:
    return WorkflowError(
        f"{filename} line {getattr(node, 'lineno', '?')}: {what} is not allowed in a workflow",
        "a workflow may import only aflowctl.workflow.api (AFlow's operator/prompt/scripts imports are rewritten "
        f"to it) and the standard modules {', '.join(sorted(ALLOWED_IMPORTS - {'__future__'}))}; see docs/sandbox.md",
    )


def check_untrusted(tree: ast.AST, filename: str) -> None:
    """Raise :class:`WorkflowError` (one line naming the line) for what generated workflow
    code may not do: imports outside the workflow API and :data:`ALLOWED_IMPORTS`,
    relative imports, the builtins of :data:`FORBIDDEN_NAMES`, dunder attributes (but
    ``__init__``/``__call__``/``__name__``/``__doc__``), the attributes of
    :data:`FORBIDDEN_ATTRS` (frames, code, modules reachable through allowed ones,
    asyncio's process and network calls), private attributes of imported modules,
    ``getattr``-style calls on names that are not plain string constants, ``getattr``
    and its kin passed as values, ``operator.attrgetter``/``methodcaller``, and
    constant format strings whose fields read attributes or items.

    A first line of defence only: workflow code also runs sandboxed (docs/sandbox.md).
    """
    modules = {
        a.asname or a.name.split(".", 1)[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _ATTR_FUNCS and id(node) not in called:
            raise _refuse(filename, node, f"'{node.id}' passed as a value (e.g. to functools.reduce)")
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".", 1)[0] not in ALLOWED_IMPORTS:
                    raise _refuse(filename, node, f"import of '{a.name}'")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                raise _refuse(filename, node, f"relative import 'from {'.' * node.level}{mod}'")
            if mod != API_MODULE and mod.split(".", 1)[0] not in ALLOWED_IMPORTS:
                raise _refuse(filename, node, f"import from '{mod}'")
            for a in node.names:
                if a.name in FORBIDDEN_ATTRS or a.name in FORBIDDEN_NAMES:
                    raise _refuse(filename, node, f"import of '{a.name}' from '{mod}'")
        elif isinstance(node, ast.Name):
            if node.id in FORBIDDEN_NAMES or (_dunder(node.id) and node.id not in _ALLOWED_DUNDERS):
                raise _refuse(filename, node, f"'{node.id}'")
        elif isinstance(node, ast.Attribute):
            if (
                (_dunder(node.attr) and node.attr not in _ALLOWED_DUNDERS)
                or node.attr in FORBIDDEN_ATTRS
                or (node.attr.startswith("_") and isinstance(node.value, ast.Name) and node.value.id in modules)
            ):
                raise _refuse(filename, node, f"attribute '.{node.attr}'")
        elif isinstance(node, ast.Call) and _reads_fields(node.func):
            raise _refuse(filename, node, "a format string that reads attributes or items ('{0.x}', '{0[k]}')")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _ATTR_FUNCS:
            name = node.args[1] if len(node.args) > 1 else None
            if (
                not (isinstance(name, ast.Constant) and isinstance(name.value, str))
                or _dunder(name.value)
                or name.value in FORBIDDEN_ATTRS
            ):
                raise _refuse(filename, node, f"{node.func.id}() with a computed or special attribute name")
