"""Logging with loguru: human-readable on stderr, JSON lines to a per-run file.

Every record goes through :func:`redact`, which masks anything that looks like an
API key, and the exact values of credential environment variables present in the
process environment.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from loguru import logger

_KEY_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),  # OpenAI, Anthropic (sk-ant-...), many compatible servers
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),  # Google
    re.compile(r"hf_[A-Za-z0-9]{20,}"),  # Hugging Face
    re.compile(
        r"(?i)(api[_-]?key|authorization|bearer|token|secret)([\"']?\s*[:=]\s*[\"']?|\s+)([A-Za-z0-9_\-\.]{12,})"
    ),
]
_SECRET_ENV_HINTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
REDACTED = "[REDACTED]"


def _secret_env_values() -> list[str]:
    vals = []
    for name, value in os.environ.items():
        if any(h in name.upper() for h in _SECRET_ENV_HINTS) and value and len(value) >= 8:
            vals.append(value)
    return vals


_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` everywhere from now on, whatever the name of the variable that
    held it (the LLM layer registers the value of every ``api_key_env`` it reads)."""
    if value and len(value) >= 4:
        _registered.add(value)


def mask_secrets(text: str) -> str:
    """Mask only the registered secret values (cheap; used on model outputs, which
    must not be altered otherwise)."""
    if text:
        for value in _registered:
            if value in text:
                text = text.replace(value, REDACTED)
    return text


def redact(text: str) -> str:
    """Mask API keys, registered secrets and the values of secret-looking environment variables."""
    if not text:
        return text
    text = mask_secrets(text)
    for value in _secret_env_values():
        text = text.replace(value, REDACTED)
    for pat in _KEY_PATTERNS:
        if pat.groups >= 3:
            text = pat.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
        else:
            text = pat.sub(REDACTED, text)
    return text


def _patch(record) -> None:
    record["message"] = redact(record["message"])


_configured = False


def setup_logging(verbosity: int = 0, run_log: Path | None = None) -> None:
    """Configure loguru: ``verbosity`` -1 quiet (errors), 0 warnings, 1 info, 2 debug."""
    global _configured
    level = {-1: "ERROR", 0: "WARNING", 1: "INFO"}.get(verbosity, "DEBUG")
    logger.remove()
    logger.configure(patcher=_patch)
    logger.add(sys.stderr, level=level, format="<level>{level: <7}</level> {message}", colorize=None)
    if run_log is not None:
        add_run_log(run_log)
    _configured = True


def add_run_log(path: Path) -> int:
    """Add a JSON-lines sink for one run; returns the sink id (for logger.remove)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return logger.add(str(path), level="DEBUG", serialize=True, enqueue=False)
