"""Reusable test helpers (import as ``helpers.<module>`` from tests: pytest puts tests/ on sys.path)."""
