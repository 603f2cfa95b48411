"""The episodes of one update: G episodes of T steps from each start state, sampled from the
current policy in batches, and the ``experiences`` rows they leave.

Every random draw is seeded by (seed, update, step), so a resumed run samples exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from the run seed and counters (stable across processes)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


@dataclass
class StepRecord:
    group_id: str
    episode_id: str
    t: int
    anchor: str
    reward: float
    valid: bool
    error: Optional[str]
    messages: list
    rollout: Any
    info: dict = field(default_factory=dict)
    advantage: float = 0.0


def collect(trainer, update: int) -> list[StepRecord]:
    """Run the episodes of one update with the current policy."""
    from aflowctl.trainer import policy as pol

    t = trainer.t
    starts = trainer._starts()
    rng = random.Random(derive_seed(t.seed, "env", update))
    states, gids, eids, keys = [], [], [], []
    base = trainer.counters["groups_consumed"]
    for gi in range(t.groups_per_batch):
        start = starts[(base + gi) % len(starts)]
        if t.carry_experience and hasattr(trainer.env, "with_tried"):
            start = trainer.env.with_tried(start, carried_tries(trainer, start.anchor, update))
        gid = f"{trainer.run_id}/u{update}/g{gi}"
        for e in range(t.episodes_per_group):
            states.append(copy.deepcopy(start))
            gids.append(gid)
            eids.append(f"{gid}/e{e}")
            keys.append(f"u{update}/g{gi}")  # the group's common random numbers (see WorkflowEnv.prepare)
    records: list[StepRecord] = []
    timing = {"generation_s": 0.0, "env_s": 0.0}
    t_env = time.perf_counter()
    if hasattr(trainer.env, "prepare"):
        trainer.env.prepare(states, rng, groups=keys)
    timing["env_s"] += time.perf_counter() - t_env
    for step in range(t.steps_per_episode):
        t_env = time.perf_counter()
        trainer.callback(
            "phase", {"update": update, "phase": "sampling edits", "step": step, "steps": t.steps_per_episode}
        )
        messages = [trainer.env.observe(s) for s in states]
        t_gen = time.perf_counter()
        timing["env_s"] += t_gen - t_env
        rollouts = pol.sample(
            trainer.model,
            trainer.tok,
            messages,
            temperature=t.temperature,
            top_p=t.top_p,
            max_new_tokens=t.max_new_tokens,
            seed=derive_seed(t.seed, "sample", update, step),
            batch_size=t.generation_batch_size,
            device=trainer.device,
        )
        t_env = time.perf_counter()
        timing["generation_s"] += t_env - t_gen
        trainer.callback(
            "phase", {"update": update, "phase": "evaluating edits", "step": step, "steps": t.steps_per_episode}
        )
        trans = trainer.env.step_batch(states, [r.text for r in rollouts], rng=rng)
        timing["env_s"] += time.perf_counter() - t_env
        for s, m, r, tr, gid, eid in zip(states, messages, rollouts, trans, gids, eids):
            records.append(
                StepRecord(gid, eid, step, s.anchor, float(tr.reward), bool(tr.valid), tr.error, m, r, dict(tr.info))
            )
        states = [tr.next_state for tr in trans]
    trainer.last_timing = timing
    return records


def carried_tries(trainer, anchor: str, update: int, keep: int = 12) -> list:
    """What earlier updates tried from the start state ``anchor`` (``train.carry_experience``),
    read back from the run's experiences (so a resumed run sees what an uninterrupted one
    would): one entry per distinct modification, its latest outcome, the ``keep`` latest."""
    from aflowctl.mdp.experience import Tried
    from aflowctl.mdp.parse import normalise_modification
    from aflowctl.store import queries

    latest: dict[str, Tried] = {}
    for r in queries.start_state_tries(trainer.store, trainer.run_id, anchor, update):
        key = normalise_modification(r["modification"])
        latest.pop(key, None)  # re-inserted last: the order is that of each one's latest try
        latest[key] = Tried(
            modification=r["modification"],
            score_before=r["score_before"],
            score_after=r["score_after"],
            valid=bool(r["valid"]),
            error=r["error"],
        )
    return list(latest.values())[-keep:]


def record_experiences(trainer, update: int, records: list[StepRecord]) -> None:
    """One ``experiences`` row per step, tagged with the policy version that sampled it."""
    from aflowctl.store import Experience, utcnow

    now = utcnow()
    version = f"{trainer.run_id}@{update}"

    def _add(session):
        for r in records:
            session.add(
                Experience(
                    run_id=trainer.run_id,
                    round=update,
                    group_id=r.group_id,
                    episode_id=r.episode_id,
                    step=r.t,
                    anchor=r.anchor,
                    prompt=json.dumps(r.messages),
                    action_text=r.rollout.text,
                    modification=r.info.get("modification"),
                    reward=r.reward,
                    score_before=r.info.get("score_before"),
                    score_after=r.info.get("score_after"),
                    valid=r.valid,
                    error=r.error,
                    policy_version=version,
                    created_at=now,
                )
            )

    trainer.store.transact(_add)
