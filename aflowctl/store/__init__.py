"""The SQLite store: models, engine and migrations, and the read API."""

from aflowctl.store.db import Store, new_run_id, open_store, utcnow
from aflowctl.store.models import (
    Checkpoint,
    Evaluation,
    Experience,
    LLMCall,
    RolloutTask,
    Run,
    TrainMetric,
    Workflow,
)

__all__ = [
    "Store",
    "open_store",
    "utcnow",
    "new_run_id",
    "Run",
    "Workflow",
    "Evaluation",
    "RolloutTask",
    "Experience",
    "LLMCall",
    "Checkpoint",
    "TrainMetric",
]
