"""The GiGPO trainer: rollouts from the current policy, GiGPO advantages, PPO updates.

One update:

1. take ``groups_per_batch`` start states (cycling through the environment's start
   states; an epoch is ``groups_per_epoch`` groups), run G episodes of T steps from
   each: at every step all active episodes are sampled together from the current
   policy (seeded by (seed, update, step), so a resumed run samples exactly what an
   uninterrupted one would) and the environment turns the responses into
   transitions;
2. GiGPO advantages, one value per step; behaviour (and reference) log-probs before
   the update; ``ppo_epochs`` optimizer steps of the clipped surrogate (:mod:`.ppo`);
3. metrics (JSON lines in the run dir, ``train_metrics`` rows, TensorBoard when
   asked), ``experiences`` rows for every step, and a checkpoint every
   ``checkpoint_every`` updates and at the end.

Step 1 and the ``experiences`` rows are :mod:`.episodes`, loading and restoring the model
:mod:`.restore`; this module is the run around them (setup, resume, schedule, metrics,
checkpoints).

Library code: it reports progress through an optional callback and never prints.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from aflowctl.errors import ConfigError
from aflowctl.store.db import new_run_id
from aflowctl.trainer import TrainingError
from aflowctl.trainer.episodes import StepRecord, derive_seed
from aflowctl.trainer.restore import check_checkpoint, load_model, pick_device

__all__ = ["StepRecord", "TrainResult", "Trainer", "derive_seed", "pick_device", "train"]

Callback = Callable[[str, dict], None]


@dataclass
class TrainResult:
    run_id: str
    status: str
    updates: int
    run_dir: Path
    last_checkpoint: Optional[Path]
    metrics: list[dict]


class Trainer:
    """Trains the policy of ``cfg.train`` in an environment; see the module docstring."""

    # set by restore.load_model:
    device: str
    autocast: Optional[str]
    base_path: Path
    fingerprint: str
    model: Any
    tok: Any
    ref_model: Any
    params: list
    optimizer: Any

    def __init__(
        self,
        cfg,
        *,
        store,
        run_id: Optional[str] = None,
        resume: bool = False,
        force: bool = False,
        fallback: bool = False,
        env=None,
        from_experiences: Sequence[str] = (),
        sft_only: bool = False,
        max_updates: Optional[int] = None,
        callback: Optional[Callback] = None,
        check_providers: bool = True,
    ):
        t = cfg.train
        if t.episodes_per_group < 1 or t.steps_per_episode < 1:
            raise ConfigError(
                "train.episodes_per_group (G) and train.steps_per_episode (T) must be >= 1", "fix the config"
            )
        if resume and not run_id:
            raise ConfigError("resuming needs the run id", "pass --resume RUN_ID")
        self.cfg = cfg
        self.t = t
        self.store = store
        self.resume = resume
        self.force = force
        self.fallback = fallback
        self.run_id = run_id or new_run_id("train")
        self.env = env
        self.from_experiences = list(from_experiences)
        self.sft_only = sft_only
        self.max_updates = max_updates
        self.check_providers = check_providers
        self.callback = callback or (lambda event, data: None)
        from aflowctl import paths

        self.run_dir = paths.run_dir(self.run_id)
        self.counters = {"epoch": 0, "update": 0, "groups_consumed": 0, "lr_step": 0, "sft_done": False}
        self._tb: Any = None  # a tensorboard SummaryWriter (optional dependency)
        self.metrics_log: list[dict] = []
        self.last_checkpoint: Optional[Path] = None

    # ------------------------------------------------------------------ setup

    def _config_dict(self) -> dict:
        return self.cfg.model_dump(mode="json", by_alias=True)

    def _setup_run(self) -> Optional[Any]:
        """Create the run (taking its lease), or reopen it and find its latest checkpoint."""
        from aflowctl.store import runs
        from aflowctl.trainer import checkpoint as ck

        ckpt = None
        if self.resume:
            ckpt = ck.latest_checkpoint(self.run_dir, fallback=self.fallback)
            if ckpt is not None:
                check_checkpoint(self, ckpt)
            # with a checkpoint, its own config was just checked (and --force given or not)
            self.opened = runs.reopen_run(
                self.store, self.run_id, kind="train", cfg=self.cfg, force=self.force or ckpt is not None
            )
        else:
            ds = ",".join(self.t.datasets) if self.t.env == "workflow" else f"keyword:{self.t.keyword}"
            self.opened = runs.create_run(
                self.store,
                kind="train",
                cfg=self.cfg,
                run_id=self.run_id,
                dataset=ds,
                seed=self.t.seed,
                state=dict(self.counters),
            )
            if self.opened.notice:
                self.callback("notice", {"message": self.opened.notice})
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a reused id starts afresh
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return ckpt

    def _set_status(self, status: str, message: Optional[str] = None) -> None:
        from aflowctl.store import runs

        runs.set_status(self.store, self.run_id, status, message, **self.counters)

    def _cleanup_after(self, update: int) -> None:
        """Drop what a killed run wrote after its last checkpoint (it is recomputed identically)."""
        from aflowctl.store import runs

        runs.discard_after(self.store, self.run_id, update - 1)
        path = self.run_dir / "metrics.jsonl"
        if path.is_file():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("update", 0) < update:
                        kept.append(line)
                except ValueError:
                    continue  # a line cut by the kill
            path.write_text("".join(k + "\n" for k in kept))
            for line in kept:
                self.metrics_log.append(json.loads(line))

    # ------------------------------------------------------------------ schedule

    def _starts(self):
        if not hasattr(self, "_start_states"):
            self._start_states = self.env.start_states()
            if not self._start_states:
                raise ConfigError("the environment has no start states", "check train.datasets / train.prompts")
        return self._start_states

    def updates_per_epoch(self) -> int:
        gpe = self.t.groups_per_epoch or len(self._starts())
        return max(1, math.ceil(gpe / self.t.groups_per_batch))

    def total_updates(self) -> int:
        n = self.t.epochs * self.updates_per_epoch()
        return min(n, self.max_updates) if self.max_updates is not None else n

    def lr(self, step: int) -> float:
        from aflowctl.trainer.schedule import lr_at

        return lr_at(
            step,
            base_lr=self.t.lr,
            warmup_steps=self.t.warmup_steps,
            total_steps=self.t.epochs * self.updates_per_epoch(),
            schedule=self.t.lr_schedule,
            min_ratio=self.t.min_lr_ratio,
        )

    # ------------------------------------------------------------------ run

    def preflight(self) -> None:
        """Checks that need no run row: the run to resume exists, the policy model, the data
        of the start workflows and the models they call, the experiences to learn from."""
        from aflowctl.store import runs
        from aflowctl.trainer import policy as pol

        runs.check_not_busy(self.store, self.run_id)
        if self.resume:
            runs.require_run(self.store, self.run_id, kind="train")
        pol.resolve_policy_path(self.t.policy_model)
        if self.env is None and self.t.env == "workflow" and self.t.action_format == "edit" and not self.sft_only:
            from aflowctl import benchmarks
            from aflowctl.mdp.core import check_action_format

            for ds in self.t.datasets:
                check_action_format(self.t.action_format, dataset=ds, kind=benchmarks.get(ds).kind, where="train")
        if self.from_experiences:
            from aflowctl.trainer.sft import load_pairs

            load_pairs(self.store, self.from_experiences, self.t)
        if self.sft_only:
            return  # no episodes: no environment to check
        if self.env is None and self.t.env == "workflow":
            from aflowctl import benchmarks

            for ds in self.t.datasets:
                benchmarks.get(ds).load("validate")  # a missing split says how to get it
        if self.check_providers:
            from aflowctl.preflight import check_models

            check_models(self.cfg, "train")

    def run(self) -> TrainResult:
        self.preflight()
        ckpt = self._setup_run()
        try:
            if self.env is None:
                from aflowctl.trainer.env import make_env

                self.env = make_env(self.cfg, store=self.store, run_id=self.run_id)
            load_model(self, ckpt)
            if self.resume:  # drop what was written after the checkpoint (or everything, when there is none)
                self._cleanup_after(int(self.counters["update"]))
            if ckpt is not None:
                self.callback("resumed", {"checkpoint": str(ckpt.path), "update": self.counters["update"]})
            self._set_status("running")
            self._open_tensorboard()
            if self.from_experiences and not self.counters.get("sft_done"):
                from aflowctl.trainer.sft import run_sft

                sft_metrics = run_sft(self, self.from_experiences)
                self.counters["sft_done"] = True
                self._log_metrics(dict(sft_metrics, update=-1, phase="sft"), db_update=None)
                self._checkpoint(metrics=sft_metrics)
            if not self.sft_only:
                total = self.total_updates()
                self.callback(
                    "start",
                    {
                        "run_id": self.run_id,
                        "total_updates": total,
                        "device": self.device,
                        "done": self.counters["update"],
                    },
                )
                while self.counters["update"] < total:
                    metrics = self._guard_oom(self.update_once)
                    self.callback("update", metrics)
                    u = self.counters["update"]
                    if u % self.t.checkpoint_every == 0 or u == total:
                        self._checkpoint(metrics=metrics)
            if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"{self.counters['update']:08d}"):
                self._checkpoint(metrics=self.metrics_log[-1] if self.metrics_log else {})
            self._set_status("completed")
        except KeyboardInterrupt:
            self._set_status("interrupted", f"interrupted; resume with 'aflowctl train --resume {self.run_id}'")
            raise
        except BaseException as exc:
            self._set_status("failed", str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__)
            raise
        finally:
            if self._tb is not None:
                self._tb.close()
            if hasattr(self.env, "close"):
                self.env.close()
            self.opened.lease.release()
        return TrainResult(
            self.run_id, "completed", self.counters["update"], self.run_dir, self.last_checkpoint, self.metrics_log
        )

    def _guard_oom(self, fn):
        import torch

        try:
            return fn()
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise TrainingError(
                f"out of GPU memory during an update (micro_batch_size={self.t.micro_batch_size}, "
                f"generation_batch_size={self.t.generation_batch_size}, max_new_tokens={self.t.max_new_tokens})",
                "lower train.micro_batch_size first (then generation_batch_size or max_new_tokens), or set "
                "train.gradient_checkpointing = true or train.lora = true; "
                "the last checkpoint is intact: resume with --resume",
            ) from None

    # ------------------------------------------------------------------ one update

    def collect(self, update: int) -> list[StepRecord]:
        """Run the episodes of one update with the current policy (:func:`.episodes.collect`)."""
        from aflowctl.trainer.episodes import collect

        return collect(self, update)

    def update_once(self) -> dict:
        import numpy as np

        from aflowctl.trainer.episodes import record_experiences
        from aflowctl.trainer.ppo import assign_advantages, ppo_update

        t = self.t
        u = self.counters["update"]
        t0 = time.perf_counter()
        records = self.collect(u)
        t_roll = time.perf_counter() - t0
        adv = assign_advantages(records, t)
        upd = ppo_update(self, records, u)
        stats, n_resp_tokens, t_upd = upd.losses, upd.response_tokens, upd.seconds

        self.counters["update"] = u + 1
        self.counters["lr_step"] = u + 1
        self.counters["groups_consumed"] += t.groups_per_batch
        self.counters["epoch"] = (u + 1) // self.updates_per_epoch()

        rewards = np.array([r.reward for r in records])
        a_arr = adv["advantage"]
        metrics = {
            "update": u,
            "epoch": u // self.updates_per_epoch(),
            "lr": upd.lr,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()),
            "valid_rate": float(np.mean([r.valid for r in records])),
            "adv_mean": float(a_arr.mean()),
            "adv_std": float(a_arr.std()),
            "adv_min": float(a_arr.min()),
            "adv_max": float(a_arr.max()),
            "singleton_step_group_frac": float(np.mean(adv["step_group_size"] == 1)),
            **stats,
            "grad_norm": upd.grad_norm,
            "steps": len(records),
            "response_tokens": n_resp_tokens,
            "response_len_mean": n_resp_tokens / max(1, len(records)),
            "tokens_per_s": upd.forward_tokens / max(t_upd, 1e-9),
            "samples_per_s": len(records) / max(t_roll + t_upd, 1e-9),
            "rollout_s": t_roll,
            "update_s": t_upd,
            # rollout_s = generation_s (policy sampling) + env_s (evaluations: executor calls) + bookkeeping
            **getattr(self, "last_timing", {}),
            "prompt_tokens_max": max((len(r.rollout.prompt_ids) for r in records), default=0),
        }
        metrics.update(self._gpu_stats())
        record_experiences(self, u, records)
        self._log_metrics(metrics, db_update=u)
        return metrics

    # ------------------------------------------------------------------ logging and storage

    def _gpu_stats(self) -> dict:
        import torch

        if not self.device.startswith("cuda"):
            return {}
        out = {"gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30}
        try:
            out["gpu_util"] = float(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 - needs pynvml; optional
            pass
        return out

    def _open_tensorboard(self) -> None:
        if not self.t.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainingError(
                "train.tensorboard = true needs the tensorboard package",
                "pip install 'aflowctl[tensorboard]' or set train.tensorboard = false",
            ) from None
        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _log_metrics(self, metrics: dict, *, db_update: Optional[int]) -> None:
        from aflowctl.store import TrainMetric, utcnow

        self.metrics_log.append(metrics)
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(metrics, default=float) + "\n")
        if db_update is not None:
            self.store.transact(
                lambda s: s.add(
                    TrainMetric(
                        run_id=self.run_id,
                        update=db_update,
                        metrics_json=json.dumps(metrics, default=float),
                        created_at=utcnow(),
                    )
                )
            )
            if self._tb is not None:
                for k, v in metrics.items():
                    if isinstance(v, (int, float)) and k != "update":
                        self._tb.add_scalar(f"train/{k}", v, db_update)
                self._tb.flush()

    def _checkpoint(self, metrics: Optional[dict] = None) -> None:
        from aflowctl.trainer import checkpoint as ck

        state = {
            "run_id": self.run_id,
            "counters": dict(self.counters),
            "config": self._config_dict(),
            "config_hash": self.cfg.hash(),
            "model": {"path": str(self.base_path), "fingerprint": self.fingerprint, "lora": self.t.lora},
            "policy_version": f"{self.run_id}@{self.counters['update']}",
        }
        info = ck.save_checkpoint(
            self.run_dir,
            int(self.counters["update"]),
            model=self.model,
            tokenizer=self.tok,
            optimizer=self.optimizer,
            state=state,
            keep=self.t.keep_checkpoints,
            store=self.store,
            run_id=self.run_id,
            metrics=metrics,
        )
        self.last_checkpoint = info.path
        self._set_status("running")
        self.callback("checkpoint", {"path": str(info.path), "update": self.counters["update"]})


def train(cfg, *, store, **kwargs) -> TrainResult:
    """Convenience wrapper: ``Trainer(cfg, store=store, **kwargs).run()``."""
    return Trainer(cfg, store=store, **kwargs).run()
