"""aflowctl: design and improve agentic LLM workflows, and train the optimizer policy."""


def __getattr__(name: str):  # the version is looked up on first use: sandbox children import aflowctl fast
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("aflowctl")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0.0.0+unknown"
    raise AttributeError(f"module 'aflowctl' has no attribute {name!r}")


__all__ = ["__version__"]
