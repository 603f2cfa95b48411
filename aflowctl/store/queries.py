"""Read API over the store, for inspect, report, compare and the trainer."""

from __future__ import annotations

import json
from typing import Any, Optional

from sqlalchemy import text

from aflowctl.store.db import Store


def _rows(store: Store, sql: str, **params) -> list[dict[str, Any]]:
    with store.read() as s:
        res = s.connection().execute(text(sql), params)
        return [dict(r._mapping) for r in res]


def run_costs(store: Store, run_id: str | None = None) -> dict[str, float]:
    """Spend per run (USD), summing known costs of non-cached calls."""
    where = "WHERE run_id = :run_id" if run_id else ""
    rows = _rows(
        store,
        f"SELECT run_id, COALESCE(SUM(CASE WHEN cached = 0 THEN cost_usd END), 0) AS cost "
        f"FROM llm_calls {where} GROUP BY run_id",
        run_id=run_id,
    )
    return {r["run_id"]: float(r["cost"]) for r in rows}


def list_runs(store: Store, kind: str | None = None) -> list[dict[str, Any]]:
    """Runs with their status, rounds, best validation score and spend.

    ``rounds`` counts as the run does (its last completed round); ``updates`` is the
    number of training updates; ``unpriced_calls`` the calls whose price is unknown,
    interrupted calls included (they may have been billed; ``cost_usd`` sums only the
    known prices).
    """
    rows = _rows(
        store,
        """
        SELECT r.id, r.kind, r.status, r.dataset, r.seed, r.created_at, r.updated_at,
               r.budget_usd, r.message,
               COALESCE(CASE WHEN json_valid(r.state_json) THEN json_extract(r.state_json, '$.completed_round') END,
                        (SELECT MAX(w.round) FROM workflows w WHERE w.run_id = r.id)) AS rounds,
               (SELECT COUNT(*) FROM train_metrics t WHERE t.run_id = r.id) AS updates,
               (SELECT MAX(m) FROM (SELECT AVG(e.score) AS m FROM evaluations e
                    JOIN workflows w ON w.id = e.workflow_id
                    WHERE w.run_id = r.id AND e.split = 'validate' GROUP BY e.workflow_id)) AS best_score,
               (SELECT COALESCE(SUM(CASE WHEN c.cached = 0 THEN c.cost_usd END), 0)
                    FROM llm_calls c WHERE c.run_id = r.id) AS cost_usd,
               (SELECT COUNT(*) FROM llm_calls c WHERE c.run_id = r.id AND c.cached = 0
                    AND (c.error IS NULL OR c.error LIKE 'interrupted%') AND c.cost_usd IS NULL) AS unpriced_calls,
               (SELECT COUNT(*) FROM llm_calls c WHERE c.run_id = r.id AND c.cached = 0 AND c.error IS NULL
                    AND c.cost_usd IS NOT NULL) AS priced_calls
        FROM runs r
        WHERE (:kind IS NULL OR r.kind = :kind)
        ORDER BY r.created_at
        """,
        kind=kind,
    )
    for r in rows:
        r["rounds"] = int(r["rounds"] or 0)
        r["updates"] = int(r["updates"] or 0)
        r["cost_usd"] = float(r["cost_usd"] or 0.0)
        r["unpriced_calls"] = int(r["unpriced_calls"] or 0)
        r["priced_calls"] = int(r["priced_calls"] or 0)
    return rows


def get_run(store: Store, run_id: str) -> Optional[dict[str, Any]]:
    rows = _rows(store, "SELECT * FROM runs WHERE id = :id", id=run_id)
    return rows[0] if rows else None


def list_experiences(
    store: Store,
    *,
    run_id: str | None = None,
    round: int | None = None,
    succeeded: bool | None = None,
    min_reward: float | None = None,
    query: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if run_id:
        clauses.append("run_id = :run_id")
        params["run_id"] = run_id
    if round is not None:
        clauses.append("round = :round")
        params["round"] = round
    if succeeded is True:
        clauses.append("valid = 1 AND reward > 0")
    elif succeeded is False:
        clauses.append("(valid = 0 OR reward <= 0)")
    if min_reward is not None:
        clauses.append("reward >= :min_reward")
        params["min_reward"] = min_reward
    if query:
        clauses.append("(modification LIKE :q ESCAPE '\\' OR action_text LIKE :q ESCAPE '\\')")
        esc = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params["q"] = f"%{esc}%"
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    lim = f"LIMIT {int(limit)}" if limit else ""
    rows = _rows(
        store,
        f"""SELECT id, run_id, round, group_id, episode_id, step, anchor, parent_workflow_id,
                   child_workflow_id, modification, reward, score_before, score_after, valid,
                   error, policy_version, action_text, prompt, created_at
            FROM experiences {where} ORDER BY run_id, round, id {lim}""",
        **params,
    )
    for r in rows:
        r["valid"] = bool(r["valid"])
    return rows


def list_workflows(store: Store, *, run_id: str, round: int | None = None) -> list[dict[str, Any]]:
    rows = _rows(
        store,
        """
        SELECT w.id, w.run_id, w.round, w.parent_id, w.hash, w.modification, w.status, w.error,
               w.graph_code, w.prompt_code, w.created_at,
               (SELECT AVG(e.score) FROM evaluations e WHERE e.workflow_id = w.id AND e.split = 'validate') AS score,
               (SELECT COUNT(*) FROM evaluations e WHERE e.workflow_id = w.id AND e.split = 'validate') AS repeats,
               (SELECT AVG(e.score) FROM evaluations e WHERE e.workflow_id = w.id AND e.split = 'test') AS test_score
        FROM workflows w
        WHERE w.run_id = :run_id AND (:round IS NULL OR w.round = :round)
        ORDER BY w.round, w.id
        """,
        run_id=run_id,
        round=round,
    )
    return rows


def workflow_scores(store: Store, workflow_id: int, split: str = "validate") -> list[float]:
    rows = _rows(
        store,
        "SELECT score FROM evaluations WHERE workflow_id = :w AND split = :s ORDER BY repeat, id",
        w=workflow_id,
        s=split,
    )
    return [float(r["score"]) for r in rows]


def call_totals(store: Store, run_id: str | None = None) -> list[dict[str, Any]]:
    """Calls, tokens and spend by run, role and model."""
    return _rows(
        store,
        """
        SELECT run_id, role, provider, model, COUNT(*) AS calls,
               SUM(cached) AS cached_calls,
               SUM(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END) AS errors,
               COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
               COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
               COALESCE(SUM(CASE WHEN cached = 0 THEN cost_usd END), 0) AS cost_usd,
               SUM(CASE WHEN cost_usd IS NULL AND (error IS NULL OR error LIKE 'interrupted%') AND cached = 0
                        THEN 1 ELSE 0 END) AS unpriced_calls,
               SUM(CASE WHEN cost_usd IS NOT NULL AND error IS NULL AND cached = 0 THEN 1 ELSE 0 END) AS priced_calls,
               AVG(latency_s) AS mean_latency_s
        FROM llm_calls
        WHERE (:run_id IS NULL OR run_id = :run_id)
        GROUP BY run_id, role, provider, model
        ORDER BY run_id, role, model
        """,
        run_id=run_id,
    )


def train_metrics(store: Store, run_id: str) -> list[dict[str, Any]]:
    rows = _rows(
        store,
        'SELECT "update", metrics_json, created_at FROM train_metrics WHERE run_id = :r ORDER BY "update"',
        r=run_id,
    )
    return [{"update": r["update"], **json.loads(r["metrics_json"]), "created_at": r["created_at"]} for r in rows]


def start_state_tries(store: Store, run_id: str, anchor: str, before_update: int) -> list[dict[str, Any]]:
    """The first-step actions a training run took from the start state ``anchor`` in its
    updates before ``before_update`` (oldest first; only answers that named a modification)."""
    return _rows(
        store,
        "SELECT modification, valid, error, score_before, score_after FROM experiences "
        "WHERE run_id = :r AND anchor = :a AND step = 0 AND round < :u AND modification IS NOT NULL ORDER BY id",
        r=run_id,
        a=anchor,
        u=before_update,
    )


# --------------------------------------------------------------------------
# report / compare / export (added by the report-compare-export feature)


def list_evaluations(
    store: Store, run_id: str, split: str | None = None, *, details: bool = False
) -> list[dict[str, Any]]:
    """Evaluation rows of a run (one per repeat), oldest first; ``details_json`` only when asked."""
    cols = "id, workflow_id, run_id, dataset, split, repeat, score, cost_usd, n, tokens, created_at"
    if details:
        cols += ", details_json"
    return _rows(
        store,
        f"SELECT {cols} FROM evaluations WHERE run_id = :r AND (:s IS NULL OR split = :s) ORDER BY created_at, id",
        r=run_id,
        s=split,
    )


def round_end_times(store: Store, run_id: str) -> dict[int, str]:
    """When each completed round of an optimize run ended (UTC ISO strings).

    Round 1 ends with its last validation evaluation of a round-1 workflow; a later
    round ends when its experiences were committed (they are written in the one
    transaction that marks the round complete).
    """
    out: dict[int, str] = {}
    r1 = _rows(
        store,
        """SELECT MAX(e.created_at) AS t FROM evaluations e JOIN workflows w ON w.id = e.workflow_id
           WHERE w.run_id = :r AND w.round = 1 AND e.split = 'validate'""",
        r=run_id,
    )
    if r1 and r1[0]["t"]:
        out[1] = r1[0]["t"]
    for row in _rows(
        store,
        "SELECT round, MAX(created_at) AS t FROM experiences WHERE run_id = :r GROUP BY round ORDER BY round",
        r=run_id,
    ):
        out[int(row["round"])] = row["t"]
    return out


def call_timeline(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Non-cached LLM calls of a run in time order: created_at, cost_usd (None when unpriced), tokens."""
    return _rows(
        store,
        """SELECT created_at, cost_usd, COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) AS tokens
           FROM llm_calls WHERE run_id = :r AND cached = 0 ORDER BY created_at, id""",
        r=run_id,
    )


def list_checkpoints(store: Store, run_id: str) -> list[dict[str, Any]]:
    rows = _rows(
        store,
        "SELECT step, path, metrics_json, sha256, created_at FROM checkpoints WHERE run_id = :r ORDER BY step",
        r=run_id,
    )
    for r in rows:
        r["metrics"] = json.loads(r.pop("metrics_json") or "{}")
    return rows


def run_state(store: Store, run_id: str) -> dict[str, Any]:
    """A run's resumable cursor (``state_json``), ``{}`` for an unknown run."""
    rows = _rows(store, "SELECT state_json FROM runs WHERE id = :id", id=run_id)
    return json.loads(rows[0]["state_json"] or "{}") if rows else {}


def first_evaluation_details(store: Store, workflow_id: int, split: str = "validate") -> Optional[list[dict]]:
    """Per-problem details of a workflow's first evaluation on ``split`` (None: not evaluated)."""
    rows = _rows(
        store,
        "SELECT details_json FROM evaluations WHERE workflow_id = :w AND split = :s ORDER BY repeat, id LIMIT 1",
        w=workflow_id,
        s=split,
    )
    return json.loads(rows[0]["details_json"]) if rows else None


def unfinished_evaluate_run(store: Store, fingerprint: str) -> Optional[str]:
    """The latest evaluate run with this fingerprint that did not complete, if any."""
    rows = _rows(
        store,
        "SELECT id, state_json FROM runs WHERE kind = 'evaluate' AND status IN "
        "('running', 'interrupted', 'failed') ORDER BY created_at DESC",
    )
    for row in rows:
        try:
            if json.loads(row["state_json"] or "{}").get("fingerprint") == fingerprint:
                return row["id"]
        except ValueError:
            continue
    return None


def first_workflow_id(store: Store, run_id: str) -> Optional[int]:
    rows = _rows(store, "SELECT id FROM workflows WHERE run_id = :r ORDER BY id LIMIT 1", r=run_id)
    return int(rows[0]["id"]) if rows else None


def get_workflow(store: Store, workflow_id: int) -> Optional[dict[str, Any]]:
    rows = _rows(store, "SELECT * FROM workflows WHERE id = :id", id=workflow_id)
    return rows[0] if rows else None


# --------------------------------------------------------------------------
# individual LLM calls (aflowctl logs) and live activity (progress displays)


def _fts_available(store: Store) -> bool:
    rows = _rows(store, "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'llm_calls_fts'")
    return bool(rows)


def fts_query(text_: str) -> str:
    """A user's search words as an FTS5 query: every word must occur (as a prefix-free
    token), FTS5 operators and quotes in the text are taken literally."""
    words = [w for w in text_.split() if w]
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def call_roles(store: Store) -> list[str]:
    return [r["role"] for r in _rows(store, "SELECT DISTINCT role FROM llm_calls WHERE role IS NOT NULL ORDER BY role")]


def list_calls(
    store: Store,
    *,
    run_id: str | None = None,
    role: str | None = None,
    model: str | None = None,
    query: str | None = None,
    limit: int | None = None,
    full: bool = False,
) -> list[dict[str, Any]]:
    """LLM calls, newest first, with tokens, cost and (``full``) the messages.

    ``model`` matches ``provider/model`` or the bare model name. ``query`` is a
    full-text search over the prompts' text and the responses (FTS5 where SQLite has
    it, every word must occur; a substring match otherwise). ``cost_usd`` is None
    when the price is unknown; a cached call cost nothing.
    """
    clauses, params = [], {}
    if run_id:
        clauses.append("c.run_id = :run_id")
        params["run_id"] = run_id
    if role:
        clauses.append("c.role = :role")
        params["role"] = role
    if model:
        clauses.append("(c.provider || '/' || c.model = :model OR c.model = :model)")
        params["model"] = model
    join = ""
    if query and query.strip():
        if _fts_available(store):
            join = "JOIN llm_calls_fts f ON f.rowid = c.id"
            clauses.append("llm_calls_fts MATCH :q")
            params["q"] = fts_query(query)
        else:
            esc = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("(c.messages_json LIKE :q ESCAPE '\\' OR c.response LIKE :q ESCAPE '\\')")
            params["q"] = f"%{esc}%"
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    lim = f"LIMIT {int(limit)}" if limit else ""
    rows = _rows(
        store,
        f"""SELECT c.id, c.created_at, c.run_id, c.role, c.provider, c.model, c.prompt_tokens, c.completion_tokens,
                   c.cost_usd, c.latency_s, c.cached, c.error, c.finish_reason, c.sample_index, c.request_hash,
                   c.messages_json, c.params_json, c.response
            FROM llm_calls c {join} {where} ORDER BY c.id DESC {lim}""",
        **params,
    )
    for r in rows:
        r["cached"] = bool(r["cached"])
        provider = r.pop("provider")
        if not r["model"].startswith(provider + "/"):
            r["model"] = f"{provider}/{r['model']}"
        try:
            messages = json.loads(r.pop("messages_json") or "[]")
        except ValueError:
            messages = []
        params_ = r.pop("params_json")
        r["prompt"] = _prompt_text(messages)
        if full:
            r["messages"] = messages
            try:
                r["params"] = json.loads(params_ or "{}")
            except ValueError:
                r["params"] = {}
    return rows


def _prompt_text(messages: Any) -> str:
    """The last user message of a chat (the prompt as a person reads it)."""
    if not isinstance(messages, list):
        return str(messages)
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c)
    return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))


def call_activity(store: Store, run_id: Optional[str], since_id: int = 0) -> dict[str, Any]:
    """Calls of a run (of any run when ``run_id`` is None) after row ``since_id``: count,
    tokens, known spend, unpriced calls, and the highest id. For live progress displays."""
    row = _rows(
        store,
        """SELECT COUNT(*) AS calls, COALESCE(SUM(prompt_tokens), 0) + COALESCE(SUM(completion_tokens), 0) AS tokens,
                  SUM(CASE WHEN cached = 0 THEN cost_usd END) AS cost_usd,
                  SUM(CASE WHEN cost_usd IS NULL AND (error IS NULL OR error LIKE 'interrupted%') AND cached = 0
                           THEN 1 ELSE 0 END) AS unpriced,
                  MAX(id) AS last_id
           FROM llm_calls WHERE (:r IS NULL OR run_id = :r) AND id > :since""",
        r=run_id,
        since=since_id,
    )[0]
    return {
        "calls": int(row["calls"] or 0),
        "tokens": int(row["tokens"] or 0),
        "cost_usd": row["cost_usd"],
        "unpriced": int(row["unpriced"] or 0),
        "last_id": int(row["last_id"] or since_id),
    }


def last_call_id(store: Store) -> int:
    return int(_rows(store, "SELECT COALESCE(MAX(id), 0) AS m FROM llm_calls")[0]["m"])


def proposal_counts(store: Store, run_id: str) -> dict[str, int]:
    """Proposals (experiences) of a run: how many, how many invalid, how many improved."""
    row = _rows(
        store,
        """SELECT COUNT(*) AS proposals, COALESCE(SUM(CASE WHEN valid = 0 THEN 1 ELSE 0 END), 0) AS invalid,
                  COALESCE(SUM(CASE WHEN valid = 1 AND reward > 0 THEN 1 ELSE 0 END), 0) AS improved
           FROM experiences WHERE run_id = :r""",
        r=run_id,
    )[0]
    return {k: int(v or 0) for k, v in row.items()}
