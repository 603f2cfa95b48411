"""Append-only, numbered schema migrations.

Each migration is a function ``mNNN_name(conn)`` taking a raw ``sqlite3``
connection. Never edit or reorder an existing migration: add a new one at the end.
Applied migrations are recorded in ``_aflowctl_migrations``; the highest number is
the database's schema version. A database whose version is above
``SCHEMA_VERSION`` was written by a newer aflowctl and is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[tuple[int, str, Migration]] = []


def migration(fn: Migration) -> Migration:
    number = int(fn.__name__[1:4])
    name = fn.__name__[5:]
    if MIGRATIONS and number != MIGRATIONS[-1][0] + 1:
        raise RuntimeError(f"migration {fn.__name__} is out of sequence")
    MIGRATIONS.append((number, name, fn))
    return fn


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            dataset TEXT,
            config_json TEXT NOT NULL DEFAULT '{}',
            config_hash TEXT,
            status TEXT NOT NULL DEFAULT 'running',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            seed INTEGER,
            version TEXT,
            git_rev TEXT
        );
        CREATE TABLE workflows (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT REFERENCES runs(id),
            round INTEGER NOT NULL DEFAULT 0,
            parent_id INTEGER REFERENCES workflows(id),
            graph_code TEXT NOT NULL,
            prompt_code TEXT NOT NULL DEFAULT '',
            hash TEXT NOT NULL,
            modification TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            workflow_id INTEGER REFERENCES workflows(id),
            split TEXT NOT NULL,
            repeat INTEGER NOT NULL DEFAULT 0,
            score REAL NOT NULL,
            cost_usd REAL,
            n INTEGER NOT NULL,
            details_json TEXT NOT NULL DEFAULT '[]',
            created_at TEXT NOT NULL
        );
        CREATE TABLE rollout_tasks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT REFERENCES runs(id),
            key TEXT NOT NULL UNIQUE,
            payload_json TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            result_json TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT
        );
        CREATE TABLE llm_calls (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT,
            role TEXT,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            sample_index INTEGER NOT NULL DEFAULT 0,
            messages_json TEXT NOT NULL DEFAULT '[]',
            params_json TEXT NOT NULL DEFAULT '{}',
            response TEXT,
            finish_reason TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd REAL,
            latency_s REAL,
            cached INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(id),
            step INTEGER NOT NULL,
            path TEXT NOT NULL,
            metrics_json TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        );
        """
    )


@migration
def m002_experiences_and_training(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
        CREATE TABLE experiences (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(id),
            round INTEGER NOT NULL,
            group_id TEXT NOT NULL,
            episode_id TEXT NOT NULL,
            step INTEGER NOT NULL,
            anchor TEXT NOT NULL,
            parent_workflow_id INTEGER REFERENCES workflows(id),
            child_workflow_id INTEGER REFERENCES workflows(id),
            prompt TEXT NOT NULL DEFAULT '',
            action_text TEXT NOT NULL DEFAULT '',
            modification TEXT,
            reward REAL NOT NULL DEFAULT 0,
            score_before REAL,
            score_after REAL,
            valid INTEGER NOT NULL DEFAULT 1,
            error TEXT,
            policy_version TEXT,
            logprobs_ref TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE train_metrics (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(id),
            "update" INTEGER NOT NULL,
            metrics_json TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        ALTER TABLE checkpoints ADD COLUMN sha256 TEXT;
        """
    )


@migration
def m003_run_state_and_eval_fields(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
        ALTER TABLE runs ADD COLUMN budget_usd REAL;
        ALTER TABLE runs ADD COLUMN state_json TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE runs ADD COLUMN message TEXT;
        ALTER TABLE workflows ADD COLUMN dataset TEXT;
        ALTER TABLE workflows ADD COLUMN status TEXT NOT NULL DEFAULT 'valid';
        ALTER TABLE workflows ADD COLUMN error TEXT;
        ALTER TABLE evaluations ADD COLUMN run_id TEXT REFERENCES runs(id);
        ALTER TABLE evaluations ADD COLUMN dataset TEXT NOT NULL DEFAULT '';
        ALTER TABLE evaluations ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;
        """
    )


@migration
def m004_indexes(conn: sqlite3.Connection) -> None:
    # Index what inspect, resume and the cache filter on.
    conn.executescript(
        """
        CREATE INDEX ix_workflows_run_id ON workflows(run_id);
        CREATE INDEX ix_workflows_hash ON workflows(hash);
        CREATE INDEX ix_evaluations_workflow_id ON evaluations(workflow_id);
        CREATE INDEX ix_evaluations_run_id ON evaluations(run_id);
        CREATE INDEX ix_rollout_tasks_run_id ON rollout_tasks(run_id);
        CREATE INDEX ix_experiences_run_id ON experiences(run_id);
        CREATE INDEX ix_llm_calls_run_id ON llm_calls(run_id);
        CREATE INDEX ix_llm_calls_request_hash ON llm_calls(request_hash);
        CREATE INDEX ix_checkpoints_run_id ON checkpoints(run_id);
        CREATE INDEX ix_train_metrics_run_id ON train_metrics(run_id);
        """
    )


@migration
def m005_run_leases(conn: sqlite3.Connection) -> None:
    # One process per run: the process executing a run holds its lease (see store/runs.py).
    conn.executescript(
        """
        CREATE TABLE run_leases (
            run_id TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            token TEXT NOT NULL,
            acquired_at TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL
        );
        """
    )


# The text of a call for full-text search: the messages' contents (not their JSON)
# and the response. Invalid JSON is indexed as it is rather than failing the insert.
_CALL_PROMPT_TEXT = (
    "CASE WHEN json_valid({m}) THEN (SELECT group_concat(json_extract(j.value, '$.content'), char(10)) "
    "FROM json_each({m}) AS j) ELSE {m} END"
)


@migration
def m006_llm_calls_fts(conn: sqlite3.Connection) -> None:
    """Full-text search over LLM calls (``aflowctl logs -q``), kept in sync by triggers.

    An external-content FTS5 index over the view ``llm_calls_text`` (id, prompt,
    response): the text is not stored twice. Existing rows are indexed here. Where
    SQLite lacks FTS5 the migration creates nothing and search falls back to LIKE.
    """
    try:
        conn.execute("CREATE VIRTUAL TABLE temp._fts5_probe USING fts5(x)")
        conn.execute("DROP TABLE temp._fts5_probe")
    except sqlite3.OperationalError:
        return
    new_text = _CALL_PROMPT_TEXT.format(m="new.messages_json")
    old_text = _CALL_PROMPT_TEXT.format(m="old.messages_json")
    conn.executescript(
        f"""
        CREATE VIEW llm_calls_text AS
            SELECT id, {_CALL_PROMPT_TEXT.format(m="messages_json")} AS prompt, response FROM llm_calls;
        CREATE VIRTUAL TABLE llm_calls_fts USING fts5(prompt, response, content='llm_calls_text', content_rowid='id');
        CREATE TRIGGER llm_calls_fts_ai AFTER INSERT ON llm_calls BEGIN
            INSERT INTO llm_calls_fts(rowid, prompt, response) VALUES (new.id, {new_text}, new.response);
        END;
        CREATE TRIGGER llm_calls_fts_ad AFTER DELETE ON llm_calls BEGIN
            INSERT INTO llm_calls_fts(llm_calls_fts, rowid, prompt, response)
                VALUES ('delete', old.id, {old_text}, old.response);
        END;
        CREATE TRIGGER llm_calls_fts_au AFTER UPDATE OF messages_json, response ON llm_calls BEGIN
            INSERT INTO llm_calls_fts(llm_calls_fts, rowid, prompt, response)
                VALUES ('delete', old.id, {old_text}, old.response);
            INSERT INTO llm_calls_fts(rowid, prompt, response) VALUES (new.id, {new_text}, new.response);
        END;
        INSERT INTO llm_calls_fts(rowid, prompt, response) SELECT id, prompt, response FROM llm_calls_text;
        CREATE INDEX ix_llm_calls_created_at ON llm_calls(created_at);
        """
    )


@migration
def m007_llm_calls_journal_key(conn: sqlite3.Connection) -> None:
    """The key of a call's entry in the write-ahead journal (store/calljournal.py): the
    rows of one call carry it, so a call is recorded once whether its row was committed
    before its process died or is added from the journal afterwards."""
    conn.executescript(
        """
        ALTER TABLE llm_calls ADD COLUMN journal_key TEXT;
        CREATE INDEX ix_llm_calls_journal_key ON llm_calls(journal_key) WHERE journal_key IS NOT NULL;
        """
    )


SCHEMA_VERSION = MIGRATIONS[-1][0]
