"""Tables of the store, as SQLModel classes (the schema itself lives in migrations.py).

Times are UTC ISO-8601 strings; JSON columns hold text produced by ``json.dumps``.
"""

from __future__ import annotations

from typing import Optional

from sqlmodel import Field, SQLModel


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    id: str = Field(primary_key=True)
    kind: str  # optimize | train | evaluate | llm
    dataset: Optional[str] = None
    config_json: str = "{}"
    config_hash: Optional[str] = None
    status: str = "running"  # running | completed | failed | interrupted | budget_exceeded | converged
    created_at: str
    updated_at: str
    seed: Optional[int] = None
    version: Optional[str] = None
    git_rev: Optional[str] = None
    budget_usd: Optional[float] = None
    state_json: str = "{}"  # resumable cursor (round, rng state, ...)
    message: Optional[str] = None


class Workflow(SQLModel, table=True):
    __tablename__ = "workflows"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: Optional[str] = Field(default=None, foreign_key="runs.id", index=True)
    round: int = 0
    parent_id: Optional[int] = Field(default=None, foreign_key="workflows.id")
    dataset: Optional[str] = None
    graph_code: str
    prompt_code: str = ""
    hash: str = Field(index=True)
    modification: Optional[str] = None
    status: str = "valid"  # valid | invalid
    error: Optional[str] = None
    created_at: str


class Evaluation(SQLModel, table=True):
    __tablename__ = "evaluations"
    id: Optional[int] = Field(default=None, primary_key=True)
    workflow_id: Optional[int] = Field(default=None, foreign_key="workflows.id", index=True)
    run_id: Optional[str] = Field(default=None, foreign_key="runs.id", index=True)
    dataset: str
    split: str
    repeat: int = 0
    score: float
    cost_usd: Optional[float] = None
    n: int
    tokens: int = 0
    details_json: str = "[]"  # per problem: {index, id, score, answer, cost_usd, error}
    created_at: str


class RolloutTask(SQLModel, table=True):
    __tablename__ = "rollout_tasks"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: Optional[str] = Field(default=None, foreign_key="runs.id", index=True)
    key: str = Field(unique=True)  # idempotency key: same task -> same key
    payload_json: str
    status: str = "pending"  # pending | running | done | failed
    attempts: int = 0
    error: Optional[str] = None
    result_json: Optional[str] = None
    created_at: str
    started_at: Optional[str] = None
    finished_at: Optional[str] = None


class Experience(SQLModel, table=True):
    __tablename__ = "experiences"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="runs.id", index=True)
    round: int
    group_id: str
    episode_id: str
    step: int
    anchor: str  # the parent's canonical hash
    parent_workflow_id: Optional[int] = Field(default=None, foreign_key="workflows.id")
    child_workflow_id: Optional[int] = Field(default=None, foreign_key="workflows.id")
    prompt: str = ""
    action_text: str = ""
    modification: Optional[str] = None
    reward: float = 0.0
    score_before: Optional[float] = None
    score_after: Optional[float] = None
    valid: bool = True
    error: Optional[str] = None
    policy_version: Optional[str] = None  # the optimizer model / policy checkpoint that acted
    logprobs_ref: Optional[str] = None
    created_at: str


class LLMCall(SQLModel, table=True):
    __tablename__ = "llm_calls"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: Optional[str] = Field(default=None, index=True)
    role: Optional[str] = None  # optimizer | executor | policy | cli
    provider: str
    model: str
    request_hash: str = Field(index=True)
    sample_index: int = 0
    messages_json: str = "[]"
    params_json: str = "{}"
    response: Optional[str] = None
    finish_reason: Optional[str] = None
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    cost_usd: Optional[float] = None
    latency_s: Optional[float] = None
    cached: bool = False
    error: Optional[str] = None
    created_at: str
    journal_key: Optional[str] = None  # the call's write-ahead journal entry (migration 7)


class Checkpoint(SQLModel, table=True):
    __tablename__ = "checkpoints"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="runs.id", index=True)
    step: int
    path: str
    metrics_json: str = "{}"
    sha256: Optional[str] = None
    created_at: str


class TrainMetric(SQLModel, table=True):
    __tablename__ = "train_metrics"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="runs.id", index=True)
    update: int
    metrics_json: str
    created_at: str


class RunLease(SQLModel, table=True):
    """The process executing a run (one at a time); see store/runs.py."""

    __tablename__ = "run_leases"
    run_id: str = Field(primary_key=True, foreign_key="runs.id")
    pid: int
    host: str
    token: str  # unique per holder: a reused pid does not inherit a lease
    acquired_at: str
    heartbeat_at: str


ALL_TABLES = [Run, Workflow, Evaluation, RolloutTask, Experience, LLMCall, Checkpoint, TrainMetric, RunLease]
