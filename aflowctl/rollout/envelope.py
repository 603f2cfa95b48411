"""What a rollout task returns on failure: the JSON error envelope and its one-line,
secret-free error text (used by :func:`aflowctl.rollout.worker.run_task` and by the
evaluate worker for per-problem errors)."""

from __future__ import annotations

import os
import traceback
from typing import Any, Optional

from aflowctl.errors import AflowctlError

ERROR_MAX_CHARS = 1000


def error_envelope(exc: BaseException, duration_s: float = 0.0) -> dict:
    from loguru import logger

    logger.debug("task failed: {}", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return {
        "ok": False,
        "error": error_text(exc),
        "error_type": type(exc).__name__,
        "error_class": f"{type(exc).__module__}:{type(exc).__qualname__}",
        "message": _redacted(getattr(exc, "message", None)) if isinstance(exc, AflowctlError) else None,
        "hint": _redacted(getattr(exc, "hint", None)) if isinstance(exc, AflowctlError) else None,
        "retryable": bool(getattr(exc, "retryable", False)) if isinstance(exc, AflowctlError) else True,
        "duration_s": duration_s,
        "pid": os.getpid(),
    }


def _redacted(text: Any) -> Optional[str]:
    if not text:
        return None
    from aflowctl.logging import redact

    return redact(str(text))[:ERROR_MAX_CHARS]


def error_text(exc: BaseException) -> str:
    """One line, secrets masked, bounded length."""
    from aflowctl.logging import redact

    msg = str(exc).strip().replace("\n", " ")
    text = msg if isinstance(exc, AflowctlError) else f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    text = redact(text)
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 3] + "..."
