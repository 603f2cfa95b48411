"""Check every model a command will call before a run is created.

For each configured model: the provider exists; its key is set (the error names the
variable); for servers that list their models (OpenAI-compatible ``GET /models``, free)
the key is accepted, the server answers and the model is served; a local model's file
resolves (without loading or converting it). Each failure is one error that names the
cause: :class:`~aflowctl.errors.MissingKeyError`, :class:`~aflowctl.errors.ProviderAuthError`,
:class:`~aflowctl.errors.ProviderUnreachableError`, :class:`~aflowctl.errors.UnknownModelError`.
``--no-preflight`` skips these checks.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from aflowctl.errors import (
    MissingKeyError,
    ProviderAuthError,
    ProviderError,
    ProviderUnreachableError,
    UnknownModelError,
)

TIMEOUT_S = 5.0
# Where a prefix's models are listed when no api_base is configured (a free GET).
DEFAULT_BASE = {"openai": "https://api.openai.com/v1"}
LISTS_MODELS = {"openai", "hosted_vllm"}


def models_to_check(cfg: Any, command: str) -> list[tuple[str, Any]]:
    """``(role, ModelConfig)`` of every model ``command`` will call with ``cfg``."""
    out = []
    if command == "optimize":
        if cfg.optimize.optimizer.model != "mutate" and not cfg.optimize.policy:
            out.append(("optimizer", cfg.optimize.optimizer))
        out.append(("executor", cfg.optimize.executor))
    elif command == "evaluate":
        out.append(("executor", cfg.optimize.executor))
    elif command == "train" and cfg.train.env == "workflow":
        out.append(("train executor", cfg.train.executor))
    return out


def check_models(cfg: Any, command: str) -> None:
    """Raise the first problem found with a model ``command`` will call (see the module docstring)."""
    for role, mc in models_to_check(cfg, command):
        check_model(mc, role=role, local_model=cfg.llm.local_model)


def check_model(mc: Any, *, role: str, local_model: Optional[str] = None) -> None:
    from aflowctl.llm.registry import resolve

    try:
        _, prefix, name = resolve(mc.model)
    except ProviderError as exc:
        raise UnknownModelError(f"{role} model {mc.model!r}: {exc.message}", exc.hint) from None
    if prefix == "local":
        _check_local(name, local_model, role)
        return
    from aflowctl.llm.providers import litellm_provider

    if prefix not in litellm_provider.PREFIXES:
        return  # a plugin's provider: nothing generic to check
    from aflowctl.llm.providers._common import api_base_for, api_key_for
    from aflowctl.llm.types import LLMRequest

    request = LLMRequest(
        messages=[{"role": "user", "content": ""}], model=mc.model, api_base=mc.api_base, api_key_env=mc.api_key_env
    )
    base = api_base_for(prefix, request)
    try:
        key = api_key_for(prefix, request, base)
    except MissingKeyError as exc:
        raise MissingKeyError(f"{role} model {mc.model}: {exc.message.split(': ', 1)[-1]}", exc.hint) from None
    if prefix not in LISTS_MODELS:
        return
    base = base or DEFAULT_BASE.get(prefix)
    if base:
        _check_listing(base, key, name, mc, role, _key_var(prefix, mc))


def _key_var(prefix: str, mc: Any) -> str:
    from aflowctl.llm.providers._common import KEY_ENV

    if mc.api_key_env:
        return mc.api_key_env
    names = KEY_ENV.get(prefix, ())
    return next((v for v in names if os.environ.get(v)), names[0] if names else "the provider's key variable")


def _check_listing(base: str, key: Optional[str], name: str, mc: Any, role: str, key_var: str) -> None:
    url = base.rstrip("/") + "/models"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:  # noqa: S310 - http(s) URL from the config
            body = resp.read(2_000_000)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ProviderAuthError(
                f"{role} model {mc.model}: {base} refused the key in {key_var} (HTTP {exc.code})",
                f"set {key_var} to a valid key for this server",
            ) from None
        return  # no listing here (404 ...): the first call will tell
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProviderUnreachableError(
            f"{role} model {mc.model}: cannot reach {base} ({reason})",
            "start the server, or fix api_base / the provider's base-URL variable (or pass --no-preflight)",
        ) from None
    try:
        ids = [m.get("id") for m in json.loads(body).get("data", [])]
    except (ValueError, AttributeError):
        return
    if ids and name not in ids:
        shown = ", ".join(str(i) for i in ids[:8]) + (" ..." if len(ids) > 8 else "")
        raise UnknownModelError(
            f"{role} model {mc.model}: {base} does not serve {name!r} (it serves {shown})",
            "fix the model name in the config or on the command line",
        )


def _check_local(name: str, local_model: Optional[str], role: str) -> None:
    from aflowctl.llm import local_model as lm

    spec = local_model if name.lower() in ("smollm2", "default") else name
    if spec is None or spec.lower() in lm.DEFAULT_ALIASES:
        try:
            lm.embedded_gguf()
        except ProviderError as exc:
            raise UnknownModelError(f"{role} model local/{name}: {exc.message}", exc.hint) from None
        return
    p = Path(spec).expanduser()
    if p.is_dir() and (p / "config.json").is_file() or p.suffix == ".gguf" and p.is_file():
        return
    if p.suffix == ".gguf" or spec.startswith((".", "/", "~")) or p.is_dir():
        raise UnknownModelError(
            f"{role} model local/{name}: {p} is not a model folder or .gguf file",
            "pass an existing Hugging Face model folder or .gguf file, or local/smollm2",
        )
