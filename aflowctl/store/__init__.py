"""The SQLite store: models, engine and migrations, and the read API."""

from aflowctl.store.db import Store, open_store, utcnow
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
    "Store", "open_store", "utcnow", "Run", "Workflow", "Evaluation", "RolloutTask",
    "Experience", "LLMCall", "Checkpoint", "TrainMetric",
]
