"""The candidate side of a solution check: runs the untrusted solution, answers calls.

Runs in the forked, confined candidate process (see :mod:`aflowctl.sandbox.harness`
for the design). It never sees the tests: it defines the solution, reports the
names it defined, then answers the judge's requests one at a time: call this,
get that attribute, the length of that... Every answer is plain data
(:mod:`aflowctl.sandbox.wire`); objects that are not plain data stay here and
cross as handles. Nothing it answers is a verdict: the judge compares.
"""

from __future__ import annotations

import builtins
import os
import traceback

from aflowctl.sandbox import wire

TYPE_CHECKING = False  # typing is not imported at run time: sandboxed children start faster
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: what the judge may ask about a handle (beyond calling it)
_OPS: dict[str, Callable[..., Any]] = {
    "call": lambda o, *a, **k: o(*a, **k),
    "getattr": getattr,
    "getitem": lambda o, k: o[k],
    "contains": lambda o, k: k in o,
    "len": len,
    "list": list,
    "repr": repr,
    "str": str,
    "bool": bool,
    "int": int,
    "float": float,
    "value": lambda o: o,
}
_MUTABLE = (list, dict, set, bytearray)


class _Refs:
    def __init__(self) -> None:
        self.objects: dict[int, Any] = {}

    def ref(self, obj: Any) -> dict:
        i = len(self.objects) + 1
        self.objects[i] = obj
        return {"r": i, "y": type(obj).__name__[:100]}

    def get(self, handle: dict) -> Any:
        try:
            return self.objects[handle["r"]]
        except (KeyError, TypeError):
            raise wire.WireError("unknown object handle") from None


def where(exc: BaseException, suffixes: tuple[str, ...] = ("solution.py",), with_line: bool = True) -> str:
    """`` at solution.py line N: <code>`` for the innermost frame of ``exc`` in those files."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(suffixes)]
    if not frames:
        return ""
    f = frames[-1]
    out = f" at {os.path.basename(f.filename)} line {f.lineno}"
    return out + (": " + (f.line or "").strip()[:200] if with_line and f.line else "")


def error_of(exc: BaseException) -> dict:
    """An exception as data: its builtin type name (or ``Exception``), message, where."""
    if isinstance(exc, SystemExit):
        return {"kind": "exit", "type": "SystemExit", "msg": f"code called sys.exit({exc.code!r})"[:300]}
    if isinstance(exc, MemoryError):
        return {"kind": "memory", "type": "MemoryError", "msg": ""}
    name = type(exc).__name__
    builtin = getattr(builtins, name, None)
    known = isinstance(builtin, type) and issubclass(builtin, Exception) and type(exc) is builtin
    try:
        msg = str(exc)[:400]
    except Exception:  # noqa: BLE001 - a hostile __str__
        msg = ""
    if isinstance(exc, RecursionError):
        msg = "maximum recursion depth exceeded"
    return {
        "kind": "exception",
        "type": name[:100] if known else "Exception",
        "shown": name[:100],
        "msg": msg,
        "where": where(exc, with_line=not (isinstance(exc, AssertionError) and msg)),
    }


def serve(solution: str, req_fd: int, resp_fd: int) -> None:
    """Define ``solution`` as ``__main__`` and answer requests until the pipe closes."""
    refs = _Refs()
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(solution, os.path.abspath("solution.py"), "exec"), ns)
    except BaseException as exc:  # noqa: BLE001 - everything the solution does is data
        wire.send(resp_fd, {"error": error_of(exc)})
        return
    names = {}
    for name, value in list(ns.items())[:5000]:
        if name.startswith("__") or not isinstance(name, str):
            continue
        if type(value).__name__ == "module":
            names[name] = {"k": "module", "m": str(getattr(value, "__name__", ""))[:200]}
        else:
            names[name] = {"k": "callable" if callable(value) else "value", **refs.ref(value)}
    wire.send(resp_fd, {"ready": names})
    while True:
        try:
            req = wire.recv(req_fd)
        except wire.PipeClosed:
            return
        wire.send(resp_fd, _answer(req, refs))


def _answer(req: dict, refs: _Refs) -> dict:
    try:
        op = _OPS[req["op"]]
        target = refs.get(req["target"])
        args = [wire.decode(a, refs.get) for a in req.get("args", [])]
        kwargs = {str(k): wire.decode(v, refs.get) for k, v in req.get("kwargs", [])}
    except (KeyError, TypeError, wire.WireError) as exc:
        return {"error": {"kind": "protocol", "type": "Exception", "msg": f"bad request: {exc}"}}
    before = {i: wire.encode(a, refs.ref) for i, a in enumerate(args) if type(a) in _MUTABLE}
    try:
        result = op(target, *args, **kwargs)
        out: dict[str, Any] = {"v": wire.encode(result, refs.ref)}
        changed = []
        for i, enc in before.items():
            now = wire.encode(args[i], refs.ref)
            if now != enc:
                changed.append([i, now])
        if changed:
            out["m"] = changed
        return out
    except BaseException as exc:  # noqa: BLE001 - the solution's errors are answers
        return {"error": error_of(exc)}
