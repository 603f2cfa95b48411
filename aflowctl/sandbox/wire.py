"""Plain values across the judge/candidate pipe: a strict codec and length-prefixed frames.

Only data crosses, never objects: ``None``, ``bool``, ``int``, ``float`` (NaN and
infinities too), ``str``, ``bytes``, ``bytearray``, ``complex``, ``list``,
``tuple``, ``dict``, ``set``, ``frozenset``, nested, as JSON with one-key tags
(``{"t": [...]}`` a tuple, ``{"d": [[k, v], ...]}`` a dict, ...). Anything else the
candidate returns stays in the candidate and crosses as a handle (``{"r": id,
"y": type name}``) that the judge can only pass back, call or ask about, and that
equals nothing but itself. Subclasses of the plain types are sent as the plain
type: an ``int`` whose ``__eq__`` always answers True arrives as a plain int.

:func:`decode` accepts nothing else: an unknown tag or shape raises
:class:`WireError`, and so does a frame longer than the cap.
"""

from __future__ import annotations

import json
import os
import select
import time

TYPE_CHECKING = False  # typing is not imported at run time: sandboxed children start faster
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Optional

MAX_FRAME = 16 * 1024 * 1024
MAX_DEPTH = 200


class WireError(Exception):
    """A frame or value that does not follow the protocol."""


class PipeTimeout(WireError):
    """No frame arrived before the deadline."""


class PipeClosed(WireError):
    """The other side closed the pipe (it exited or died)."""


# --------------------------------------------------------------------------- values


def encode(value: Any, ref: Optional[Callable[[Any], dict]] = None, depth: int = 0) -> Any:
    """``value`` as a JSON-able structure; objects that are not plain data go through
    ``ref`` (which returns a handle), or raise :class:`WireError` without one."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    if value is None or value is True or value is False:
        return value
    t = type(value)
    if t is int or t is str or t is float:
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    d = depth + 1
    if isinstance(value, list):
        return [encode(v, ref, d) for v in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"t": [encode(v, ref, d) for v in tuple.__iter__(value)]}
    if isinstance(value, dict):
        return {"d": [[encode(k, ref, d), encode(v, ref, d)] for k, v in dict.items(value)]}
    if isinstance(value, frozenset):
        return {"f": [encode(v, ref, d) for v in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"s": [encode(v, ref, d) for v in set.__iter__(value)]}
    if isinstance(value, bytes):
        return {"b": bytes.hex(value)}
    if isinstance(value, bytearray):
        return {"ba": bytearray.hex(value)}
    if isinstance(value, complex):
        return {"c": [complex.__getattribute__(value, "real"), complex.__getattribute__(value, "imag")]}
    if ref is None:
        raise WireError(f"a {type(value).__name__} cannot be sent to the sandbox")
    return ref(value)


_TAGS = {"t", "d", "s", "f", "b", "ba", "c", "r"}


def decode(data: Any, ref: Optional[Callable[[dict], Any]] = None) -> Any:
    """The value of an :func:`encode` structure; handles go through ``ref``."""
    return _decode(data, ref, 0)


def _decode(data: Any, ref: Optional[Callable[[dict], Any]], depth: int) -> Any:
    if depth > MAX_DEPTH + 2:
        raise WireError("value nested too deeply")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    d = depth + 1
    if isinstance(data, list):
        return [_decode(v, ref, d) for v in data]
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise WireError(f"malformed value of type {type(data).__name__}")
    tag = next(iter(data))
    if tag not in _TAGS or (len(data) == 2 and tag != "r"):
        raise WireError(f"malformed value with key {tag!r}")
    body = data[tag]
    try:
        if tag == "t":
            return tuple(_decode(v, ref, d) for v in body)
        if tag == "d":
            return {_decode(k, ref, d): _decode(v, ref, d) for k, v in body}
        if tag == "s":
            return {_decode(v, ref, d) for v in body}
        if tag == "f":
            return frozenset(_decode(v, ref, d) for v in body)
        if tag == "b":
            return bytes.fromhex(body)
        if tag == "ba":
            return bytearray.fromhex(body)
        if tag == "c":
            re_, im = body
            return complex(float(re_), float(im))
    except WireError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:
        raise WireError(f"malformed value: {exc}") from None
    if ref is None or not isinstance(body, int):
        raise WireError("unexpected object handle")
    return ref(data)


# --------------------------------------------------------------------------- frames


def send(fd: int, message: dict) -> None:
    """Write one frame (4-byte big-endian length, then JSON)."""
    body = json.dumps(message, separators=(",", ":")).encode("utf-8", "surrogatepass")
    if len(body) > MAX_FRAME:
        raise WireError(f"message of {len(body)} bytes is over the {MAX_FRAME}-byte limit")
    data = len(body).to_bytes(4, "big") + body
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: Optional[float]) -> bytes:
    chunks = []
    poller = None
    if deadline is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while n:
        if poller is not None:
            left = deadline - time.monotonic()  # type: ignore[operator]
            if left <= 0 or not poller.poll(max(int(left * 1000), 1)):
                raise PipeTimeout("no answer before the deadline")
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise PipeClosed("the other side closed the pipe")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(fd: int, deadline: Optional[float] = None) -> dict:
    """Read one frame; :class:`PipeTimeout` after ``deadline`` (``time.monotonic()``),
    :class:`PipeClosed` at end of file, :class:`WireError` for anything malformed."""
    size = int.from_bytes(_read_exact(fd, 4, deadline), "big")
    if size > MAX_FRAME:
        raise WireError(f"message of {size} bytes is over the {MAX_FRAME}-byte limit")
    try:
        msg = json.loads(_read_exact(fd, size, deadline).decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"malformed message: {type(exc).__name__}") from None
    if not isinstance(msg, dict):
        raise WireError("malformed message")
    return msg
