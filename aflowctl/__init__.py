"""aflowctl: design and improve agentic LLM workflows, and train the optimizer policy."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("aflowctl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
