"""What the store's tables and columns mean, and the questions people ask of them.

Used by ``aflowctl browse`` as Datasette metadata (table and column descriptions,
canned queries). The canned queries are plain read-only SQL over the schema of
:mod:`aflowctl.store.migrations`; a parameter left empty means "all runs".
"""

from __future__ import annotations

from typing import Any

TABLES: dict[str, dict[str, Any]] = {
    "runs": {
        "description": "One row per run of optimize, train or evaluate: its config, status and resumable state.",
        "columns": {
            "id": "run id (opt-..., train-..., eval-... or the name given with --run-id)",
            "kind": "optimize | train | evaluate",
            "status": "running | completed | converged | failed | interrupted | budget_exceeded",
            "config_json": "the whole configuration of the run (JSON)",
            "state_json": "resumable cursor: completed_round, counters (JSON)",
            "budget_usd": "spend cap of the run",
            "message": "why the run stopped, when it did not complete",
        },
    },
    "workflows": {
        "description": "Search-tree nodes: a workflow's graph.py and prompt.py, its parent and the edit that made it.",
        "columns": {
            "round": "search round that created it (1 = the initial workflow)",
            "parent_id": "the workflow it was derived from",
            "hash": "canonical hash of the code (identical workflows share it)",
            "modification": "what the optimizer changed, in its words",
            "status": "valid | invalid (failed to parse, load or pass the smoke run)",
        },
    },
    "evaluations": {
        "description": "One row per evaluation repeat of a workflow on a split: score, cost, tokens, problem details.",
        "columns": {
            "split": "validate | test",
            "repeat": "validation repeat (different sampling seed)",
            "score": "mean score over the problems, 0..1",
            "n": "problems evaluated",
            "details_json": "per problem: index, score, prediction, cost, error (JSON)",
        },
    },
    "experiences": {
        "description": "One row per proposed modification: the RL view of the search (state, action, reward).",
        "columns": {
            "group_id": "GiGPO episode group",
            "episode_id": "episode (one candidate chain)",
            "anchor": "canonical hash of the parent: the anchor state that groups steps",
            "reward": "score after minus score before (0 for an invalid proposal)",
            "valid": "1 when the proposal produced a workflow that was evaluated",
            "prompt": "what the optimizer was shown",
            "action_text": "what the optimizer answered",
            "policy_version": "the optimizer model or policy checkpoint that acted",
        },
    },
    "llm_calls": {
        "description": "Every LLM call: model, role, messages, response, tokens, cost (NULL = unknown price), latency.",
        "columns": {
            "role": "optimizer | executor | policy | cli",
            "request_hash": "hash of the request (the cache key)",
            "messages_json": "the chat messages sent (JSON)",
            "params_json": "sampling parameters (JSON)",
            "cost_usd": "cost in USD; NULL when the model's price is unknown",
            "cached": "1 when answered from the cache (costs nothing)",
            "latency_s": "seconds the call took",
        },
    },
    "rollout_tasks": {
        "description": "Durable rollout tasks: a resumed run reuses the finished ones.",
        "columns": {
            "key": "idempotency key",
            "payload_json": "what the worker ran (JSON)",
            "result_json": "what it returned (JSON)",
        },
    },
    "train_metrics": {
        "description": "One row per training update: reward, validity, loss, KL, entropy, throughput.",
        "columns": {"metrics_json": "all metrics of the update (JSON)"},
    },
    "checkpoints": {
        "description": "Training checkpoints: step, folder, metrics and checksum.",
        "columns": {"metrics_json": "metrics at the checkpoint (JSON)", "sha256": "checksum of the weights"},
    },
}

CANNED_QUERIES: dict[str, dict[str, str]] = {
    "workflows_by_score": {
        "title": "Workflows by score, per run",
        "description": "Mean validation score of every workflow, best first within each run.",
        "sql": """SELECT w.run_id, w.id AS workflow_id, w.round, w.parent_id, w.status, w.modification,
       (SELECT AVG(e.score) FROM evaluations e WHERE e.workflow_id = w.id AND e.split = 'validate') AS score,
       (SELECT COUNT(*) FROM evaluations e WHERE e.workflow_id = w.id AND e.split = 'validate') AS repeats,
       (SELECT AVG(e.score) FROM evaluations e WHERE e.workflow_id = w.id AND e.split = 'test') AS test_score
FROM workflows w
WHERE (:run_id = '' OR w.run_id = :run_id)
ORDER BY w.run_id, score IS NULL, score DESC, w.round""",
    },
    "experiences_by_reward": {
        "title": "Experiences by reward",
        "description": "Every proposed modification, highest reward first.",
        "sql": """SELECT run_id, round, step, modification, reward, score_before, score_after, valid, error,
       policy_version
FROM experiences
WHERE (:run_id = '' OR run_id = :run_id)
ORDER BY reward DESC, run_id, round""",
    },
    "spend_by_role_and_model": {
        "title": "Spend by role and model",
        "description": "Calls, tokens and known spend per run, role and model; unpriced calls are counted apart.",
        "sql": """SELECT run_id, role, provider || '/' || model AS model, COUNT(*) AS calls,
       SUM(cached) AS cached_calls, SUM(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END) AS errors,
       COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
       SUM(CASE WHEN cached = 0 THEN cost_usd END) AS cost_usd,
       SUM(CASE WHEN cost_usd IS NULL AND error IS NULL AND cached = 0 THEN 1 ELSE 0 END) AS unpriced_calls
FROM llm_calls
WHERE (:run_id = '' OR run_id = :run_id)
GROUP BY run_id, role, provider, model
ORDER BY run_id, cost_usd DESC""",
    },
    "training_metrics": {
        "title": "Training metrics",
        "description": "Per update of each training run: reward, valid rate, loss, KL, entropy, gradient norm.",
        "sql": """SELECT run_id, "update",
       json_extract(metrics_json, '$.reward_mean') AS reward_mean,
       json_extract(metrics_json, '$.reward_std') AS reward_std,
       json_extract(metrics_json, '$.valid_rate') AS valid_rate,
       json_extract(metrics_json, '$.loss') AS loss, json_extract(metrics_json, '$.kl') AS kl,
       json_extract(metrics_json, '$.entropy') AS entropy, json_extract(metrics_json, '$.grad_norm') AS grad_norm,
       created_at
FROM train_metrics
WHERE (:run_id = '' OR run_id = :run_id)
ORDER BY run_id, "update\"""",
    },
}


def datasette_metadata(database: str) -> dict[str, Any]:
    """Datasette metadata for the store opened as ``database`` (its file's stem)."""
    tables = {name: dict(info) for name, info in TABLES.items()}
    tables["llm_calls"]["fts_table"] = "llm_calls_fts"  # aflowctl logs -q uses the same index
    tables["llm_calls"]["fts_pk"] = "id"
    for hidden in ("_aflowctl_migrations", "llm_calls_fts", "llm_calls_text"):
        tables.setdefault(hidden, {})["hidden"] = True
    return {
        "title": "aflowctl store",
        "description": "Runs, workflows, evaluations, experiences, LLM calls and training metrics (read-only).",
        "databases": {database: {"tables": tables, "queries": CANNED_QUERIES}},
    }
