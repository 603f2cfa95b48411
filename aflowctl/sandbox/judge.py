"""The judge side of a solution check: runs the trusted test, decides the verdict.

Runs in its own confined process (see :mod:`aflowctl.sandbox.harness` for the
design), a sibling of the candidate that cannot be reached from it. The test's
source arrives on a descriptor the candidate closed before any of its code ran;
it executes here, against :class:`Remote` stand-ins for what the solution
defined. Calling one sends the arguments to the candidate and gets back plain
values (or handles), so every comparison in the test runs here, on data.
The verdict goes to a descriptor the candidate never had.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import linecache
import os
import signal
import sys
import time

from aflowctl.sandbox import wire
from aflowctl.sandbox.candidate import where

TYPE_CHECKING = False  # typing is not imported at run time: sandboxed children start faster
if TYPE_CHECKING:
    from typing import Any


class Abort(BaseException):
    """Ends the test at once with a verdict (candidate exited, died, timed out)."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Channel:
    def __init__(self, cand_pid: int, req_fd: int, resp_fd: int, deadline: float, timeout_s: float):
        self.cand_pid = cand_pid
        self.req_fd = req_fd
        self.resp_fd = resp_fd
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.remotes: dict[int, Remote] = {}

    def recv(self) -> dict:
        try:
            return wire.recv(self.resp_fd, self.deadline)
        except wire.PipeTimeout:
            raise Abort("timeout", f"killed after {self.timeout_s:g} s wall clock") from None
        except wire.PipeClosed:
            raise Abort(*self.death()) from None
        except wire.WireError as exc:
            raise Abort("exception", f"the solution's process broke the protocol: {exc}") from None

    def death(self) -> tuple[str, str]:
        """Why the candidate went away: its exit status or signal."""
        status = None
        for _ in range(100):
            pid, status = os.waitpid(self.cand_pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.005)
        else:
            return "exit", "the program closed its channel before the tests finished"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXFSZ:
                return "output_limit", "output exceeded the limit"
            if sig == signal.SIGXCPU:
                return "timeout", "CPU time limit exceeded"
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return "signal", f"killed by {name}"
        code = os.WEXITSTATUS(status)
        return "exit", "the program ended before the tests finished" + (f" (status {code})" if code else "")

    def ref(self, handle: dict) -> Remote:
        i = handle["r"]
        r = self.remotes.get(i)
        if r is None:
            r = self.remotes[i] = Remote(self, i, str(handle.get("y", "object"))[:100])
        return r

    def ask(self, op: str, target: int, *args: Any, **kwargs: Any) -> Any:
        try:
            msg = {
                "op": op,
                "target": {"r": target},
                "args": [wire.encode(a, _handle) for a in args],
                "kwargs": [[k, wire.encode(v, _handle)] for k, v in kwargs.items()],
            }
        except wire.WireError as exc:
            raise TypeError(str(exc)) from None
        try:
            wire.send(self.req_fd, msg)
        except (BrokenPipeError, wire.WireError):
            raise Abort(*self.death()) from None
        answer = self.recv()
        if "error" in answer:
            raise _remote_exception(answer["error"])
        try:
            value = wire.decode(answer.get("v"), self.ref)
            for i, enc in answer.get("m", []):
                _write_back(args[i], wire.decode(enc, self.ref))
        except (wire.WireError, IndexError, TypeError, ValueError) as exc:
            raise Abort("exception", f"the solution's process sent a malformed answer: {exc}") from None
        return value


def _handle(value: Any) -> dict:
    if isinstance(value, Remote):
        return {"r": object.__getattribute__(value, "_id")}
    raise wire.WireError(f"a {type(value).__name__} cannot be sent to the solution")


def _write_back(orig: Any, new: Any) -> None:
    """The candidate changed a list/dict/set argument in place: do the same here."""
    if type(orig) is list or type(orig) is bytearray:
        orig[:] = new
    elif type(orig) is dict or type(orig) is set:
        orig.clear()
        orig.update(new)


class RemoteError(Exception):
    """An exception raised in the solution whose type is not a builtin one."""


def _remote_exception(err: dict) -> BaseException:
    kind = err.get("kind")
    if kind == "exit":
        return Abort("exit", str(err.get("msg", ""))[:300])
    if kind == "memory":
        return Abort("memory", "MemoryError")
    if kind == "protocol":
        return Abort("exception", str(err.get("msg", ""))[:300])
    cls = getattr(builtins, str(err.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)) or cls is Exception:
        cls = RemoteError
    try:
        exc = cls(str(err.get("msg", ""))[:400])
    except Exception:  # noqa: BLE001 - exception types with other signatures
        exc = RemoteError(str(err.get("msg", ""))[:400])
    exc._aflowctl_remote = {  # type: ignore[attr-defined]  # marker attribute read back by the judge's reporting
        "shown": str(err.get("shown", cls.__name__))[:100],
        "where": str(err.get("where", ""))[:300],
    }
    return exc


class Remote:
    """Something the solution defined or returned that is not plain data.

    Calls, attributes, items, ``len``, iteration, ``str``/``repr``, ``bool``,
    ``int``/``float`` are asked of the candidate and answered as data. Equality is
    identity of the handle: an object of the solution never equals a value here
    by its own say-so.
    """

    __slots__ = ("_ch", "_id", "_type")

    def __init__(self, ch: Channel, i: int, type_name: str):
        object.__setattr__(self, "_ch", ch)
        object.__setattr__(self, "_id", i)
        object.__setattr__(self, "_type", type_name)

    def _ask(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return object.__getattribute__(self, "_ch").ask(op, object.__getattribute__(self, "_id"), *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ask("call", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __getitem__(self, key: Any) -> Any:
        return self._ask("getitem", key)

    def __contains__(self, key: Any) -> bool:
        return bool(self._ask("contains", key))

    def __len__(self) -> int:
        n = self._ask("len")
        if type(n) is not int:
            raise TypeError("len() of the solution's object is not an int")
        return n

    def __iter__(self):
        items = self._ask("list")
        if type(items) is not list:
            raise TypeError("the solution's object did not iterate to a list")
        return iter(items)

    def __bool__(self) -> bool:
        return self._ask("bool") is True

    def __int__(self) -> int:
        v = self._ask("int")
        if type(v) is not int:
            raise TypeError("int() of the solution's object is not an int")
        return v

    def __index__(self) -> int:
        return self.__int__()

    def __float__(self) -> float:
        v = self._ask("float")
        if type(v) is not float:
            raise TypeError("float() of the solution's object is not a float")
        return v

    def __str__(self) -> str:
        v = self._ask("str")
        return v if type(v) is str else "<object>"

    def __repr__(self) -> str:
        v = self._ask("repr")
        return v if type(v) is str else "<object>"

    def __eq__(self, other: Any) -> bool:
        return (
            isinstance(other, Remote)
            and object.__getattribute__(other, "_id") == object.__getattribute__(self, "_id")
            and object.__getattribute__(other, "_ch") is object.__getattribute__(self, "_ch")
        )

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(("aflowctl-remote", object.__getattribute__(self, "_id")))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the solution's objects cannot be changed from the test")


def _free_names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _reason_of(exc: BaseException) -> tuple[str, str]:
    remote = getattr(exc, "_aflowctl_remote", None)
    if isinstance(exc, MemoryError) and remote is None:
        return "memory", "MemoryError"
    name = remote["shown"] if remote else type(exc).__name__
    msg = str(exc)
    if isinstance(exc, RecursionError):
        msg = "maximum recursion depth exceeded"
    text = (f"{name}: {msg}" if msg else name).strip()[:400]
    if remote:
        return "exception", text + (remote["where"] or where(exc, ("test.py",)))
    return "exception", text + where(exc, ("test.py",), with_line=not (isinstance(exc, AssertionError) and msg))


def run(*, test: str, prelude: str, entry: str, ch: Channel) -> tuple[str, str]:
    """Wait for the solution, run ``prelude`` + ``test`` here against it: (status, detail)."""
    try:
        return _run(test, prelude, entry, ch)
    except Abort as exc:
        return exc.status, exc.detail


def _run(test: str, prelude: str, entry: str, ch: Channel) -> tuple[str, str]:
    first = ch.recv()
    if "error" in first:
        err = first["error"]
        if err.get("kind") == "exit":
            return "exit", str(err.get("msg", ""))[:300]
        if err.get("kind") == "memory":
            return "memory", "MemoryError"
        return _reason_of(_remote_exception(err))
    names = first.get("ready")
    if not isinstance(names, dict):
        return "exception", "the solution's process broke the protocol"
    info = names.get(entry) if entry else None
    if entry and not (isinstance(info, dict) and info.get("k") == "callable"):
        return "missing", f"solution does not define {entry}()"
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    path = os.path.abspath("test.py")
    linecache.cache[path] = (len(test), None, test.splitlines(keepends=True), path)
    try:
        exec(compile(prelude, os.path.abspath("prelude.py"), "exec"), ns)
        tree = ast.parse(test, path)
        code = compile(tree, path, "exec")
    except SyntaxError as exc:
        return "exception", f"SyntaxError: {exc.msg} in the test (line {exc.lineno})"
    try:
        # What the test names and the solution defines; builtins stay builtins here
        # (a solution's `abs` must not judge), except the entry point itself (MBPP's `sum`).
        for name in _free_names(tree) - set(ns) - (set(dir(builtins)) - {entry}):
            info = names.get(name)
            if not isinstance(info, dict):
                continue
            if info.get("k") == "module" and str(info.get("m")) in sys.stdlib_module_names:
                ns[name] = importlib.import_module(str(info["m"]))
            elif info.get("k") == "callable" and isinstance(info.get("r"), int):
                ns[name] = ch.ref(info)
            elif info.get("k") == "value" and isinstance(info.get("r"), int):
                ns[name] = ch.ask("value", info["r"])
        candidate = ch.ref(info) if entry and isinstance((info := names.get(entry)), dict) else None
        exec(code, ns)
        check = ns.get("check")
        if callable(check):
            co = getattr(check, "__code__", None)
            nparams = (co.co_argcount - len(getattr(check, "__defaults__", None) or ())) if co is not None else 1
            if nparams >= 1:
                check(candidate)
            else:
                check()
    except Abort as exc:
        return exc.status, exc.detail
    except BaseException as exc:  # noqa: BLE001 - the test failed
        return _reason_of(exc)
    return "passed", ""
