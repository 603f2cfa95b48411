"""The ``llm_calls`` rows of a store, read with plain sqlite3 (what a user's own query sees)."""

from __future__ import annotations

import sqlite3


def rows(db, where: str = "1=1") -> list[dict]:
    """Every ``llm_calls`` row matching the SQL condition ``where``, in insertion order."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM llm_calls WHERE {where} ORDER BY id")]
    finally:
        con.close()
