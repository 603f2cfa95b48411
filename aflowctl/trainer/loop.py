"""The GiGPO trainer: rollouts from the current policy, GiGPO advantages, PPO updates.

One update:

1. take ``groups_per_batch`` start states (cycling through the environment's start
   states; an epoch is ``groups_per_epoch`` groups), run G episodes of T steps from
   each: at every step all active episodes are sampled together from the current
   policy (seeded by (seed, update, step), so a resumed run samples exactly what an
   uninterrupted one would) and the environment turns the responses into
   transitions;
2. behaviour log-probs of every sampled token come from the same policy's forward
   pass before the update (no gradient);
3. GiGPO advantages (:mod:`aflowctl.trainer.advantages`), one value per step,
   broadcast to its response tokens;
4. ``ppo_epochs`` optimizer steps of the clipped surrogate (:mod:`.loss`), each over
   the whole batch in micro-batches with gradient accumulation (token mean over the
   batch), gradient clipping, AdamW, learning rate ``lr_at(update)``;
5. metrics (JSON lines in the run dir, ``train_metrics`` rows, TensorBoard when
   asked), ``experiences`` rows for every step, and a checkpoint every
   ``checkpoint_every`` updates and at the end.

Library code: it reports progress through an optional callback and never prints.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from aflowctl.errors import CheckpointError, ConfigError
from aflowctl.store.db import new_run_id
from aflowctl.trainer import TrainingError

Callback = Callable[[str, dict], None]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from the run seed and counters (stable across processes)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def pick_device(requested: Optional[str]) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"train.device = {requested} but no CUDA device is available",
                "set train.device = 'cpu' or leave it unset",
            )
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


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
                self._check_checkpoint(ckpt)
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

    def _check_checkpoint(self, ckpt) -> None:
        """Refuse a checkpoint of another base model or config (unless --force)."""
        from aflowctl.trainer import checkpoint as ck
        from aflowctl.trainer import policy as pol

        fingerprint = pol.model_fingerprint(pol.resolve_policy_path(self.t.policy_model))
        problems = ck.compatibility_problems(
            ckpt.state, config=self._config_dict(), model_fingerprint=fingerprint, lora=self.t.lora
        )
        if problems and not self.force:
            raise CheckpointError(
                f"checkpoint {ckpt.path.name} of run {self.run_id} belongs to another model or config: "
                + "; ".join(problems),
                "resume with the run's own config (omit --config), or pass --force to use it anyway",
            )

    def _load_model(self, ckpt) -> None:
        import torch

        from aflowctl.trainer import checkpoint as ck
        from aflowctl.trainer import policy as pol

        self.device = pick_device(self.t.device)
        self.autocast = "cuda" if (self.device.startswith("cuda") and self.t.bf16) else None
        base = pol.resolve_policy_path(self.t.policy_model)
        self.base_path = base
        self.fingerprint = pol.model_fingerprint(base)
        lora = {"r": self.t.lora_r, "alpha": self.t.lora_alpha} if self.t.lora else None
        if ckpt is not None:
            self._check_checkpoint(ckpt)
        if ckpt is not None and not self.t.lora:
            self.model, self.tok = pol.load_policy(
                ckpt.model_dir, device=self.device, gradient_checkpointing=self.t.gradient_checkpointing
            )
        else:
            self.model, self.tok = pol.load_policy(
                base, device=self.device, lora=lora, gradient_checkpointing=self.t.gradient_checkpointing
            )
            if ckpt is not None:  # LoRA: put the adapter weights back
                from peft import set_peft_model_state_dict
                from safetensors.torch import load_file

                set_peft_model_state_dict(self.model, load_file(str(ckpt.model_dir / "adapter_model.safetensors")))
        self.model.train()
        self.ref_model = None
        if self.t.use_kl and not self.t.lora:
            self.ref_model, _ = pol.load_policy(base, device=self.device)
            self.ref_model.eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.t.lr, weight_decay=self.t.weight_decay)
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt.load_optimizer_state(self.device))
            ck.restore_rng(ckpt.load_rng_state())
            self.counters.update(ckpt.state.get("counters", {}))
            self.last_checkpoint = ckpt.path
        else:
            random.seed(self.t.seed)
            import numpy as np

            np.random.seed(self.t.seed % (2**32))
            torch.manual_seed(self.t.seed)

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
            self._load_model(ckpt)
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
        """Run the episodes of one update with the current policy."""
        from aflowctl.trainer import policy as pol

        t = self.t
        starts = self._starts()
        rng = random.Random(derive_seed(t.seed, "env", update))
        states, gids, eids, keys = [], [], [], []
        base = self.counters["groups_consumed"]
        for gi in range(t.groups_per_batch):
            start = starts[(base + gi) % len(starts)]
            gid = f"{self.run_id}/u{update}/g{gi}"
            for e in range(t.episodes_per_group):
                states.append(copy.deepcopy(start))
                gids.append(gid)
                eids.append(f"{gid}/e{e}")
                keys.append(f"u{update}/g{gi}")  # the group's common random numbers (see WorkflowEnv.prepare)
        records: list[StepRecord] = []
        timing = {"generation_s": 0.0, "env_s": 0.0}
        t_env = time.perf_counter()
        if hasattr(self.env, "prepare"):
            self.env.prepare(states, rng, groups=keys)
        timing["env_s"] += time.perf_counter() - t_env
        for step in range(t.steps_per_episode):
            t_env = time.perf_counter()
            self.callback(
                "phase", {"update": update, "phase": "sampling edits", "step": step, "steps": t.steps_per_episode}
            )
            messages = [self.env.observe(s) for s in states]
            t_gen = time.perf_counter()
            timing["env_s"] += t_gen - t_env
            rollouts = pol.sample(
                self.model,
                self.tok,
                messages,
                temperature=t.temperature,
                top_p=t.top_p,
                max_new_tokens=t.max_new_tokens,
                seed=derive_seed(t.seed, "sample", update, step),
                batch_size=t.generation_batch_size,
                device=self.device,
            )
            t_env = time.perf_counter()
            timing["generation_s"] += t_env - t_gen
            self.callback(
                "phase", {"update": update, "phase": "evaluating edits", "step": step, "steps": t.steps_per_episode}
            )
            trans = self.env.step_batch(states, [r.text for r in rollouts], rng=rng)
            timing["env_s"] += time.perf_counter() - t_env
            for s, m, r, tr, gid, eid in zip(states, messages, rollouts, trans, gids, eids):
                records.append(
                    StepRecord(
                        gid, eid, step, s.anchor, float(tr.reward), bool(tr.valid), tr.error, m, r, dict(tr.info)
                    )
                )
            states = [tr.next_state for tr in trans]
        self.last_timing = timing
        return records

    def _micro_batches(self, idx: Sequence[int]) -> list[list[int]]:
        mb = self.t.micro_batch_size
        return [list(idx[i : i + mb]) for i in range(0, len(idx), mb)]

    def update_once(self) -> dict:
        import numpy as np
        import torch

        from aflowctl.trainer import policy as pol
        from aflowctl.trainer.advantages import factorize, gigpo_advantages_arrays
        from aflowctl.trainer.loss import ppo_loss

        t = self.t
        u = self.counters["update"]
        t0 = time.perf_counter()
        records = self.collect(u)
        t_roll = time.perf_counter() - t0

        # GiGPO advantages
        adv = gigpo_advantages_arrays(
            factorize(r.group_id for r in records),
            factorize(r.episode_id for r in records),
            np.array([r.t for r in records], dtype=np.int64),
            factorize(r.anchor for r in records),
            np.array([r.reward for r in records], dtype=np.float64),
            np.array([r.valid for r in records], dtype=bool),
            gamma=t.gamma,
            mode=t.mode,
            step_advantage_w=t.step_advantage_w,
            invalid_penalty=t.invalid_penalty,
        )
        for r, a in zip(records, adv["advantage"].tolist()):
            r.advantage = a
        rolls = [r.rollout for r in records]
        pad = self.tok.pad_token_id
        order = list(range(len(records)))
        n_resp_tokens = sum(len(x.response_ids) for x in rolls)

        # behaviour (and reference) log-probs, same micro-batches as the first PPO epoch
        self.callback("phase", {"update": u, "phase": "policy update"})
        t1 = time.perf_counter()
        old: dict[int, torch.Tensor] = {}
        ref: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for mb in self._micro_batches(order):
                ids, att, pos, resp, _ = pol.pack([rolls[i] for i in mb], pad, self.device)
                lp, _ = pol.response_logprobs(
                    self.model, ids, att, pos, resp, temperature=t.temperature, autocast=self.autocast
                )
                for k, i in enumerate(mb):
                    old[i] = lp[k, : len(rolls[i].response_ids)].detach()
                if t.use_kl:
                    if self.ref_model is not None:
                        rlp, _ = pol.response_logprobs(
                            self.ref_model, ids, att, pos, resp, temperature=t.temperature, autocast=self.autocast
                        )
                    else:
                        with self.model.disable_adapter():
                            rlp, _ = pol.response_logprobs(
                                self.model, ids, att, pos, resp, temperature=t.temperature, autocast=self.autocast
                            )
                    for k, i in enumerate(mb):
                        ref[i] = rlp[k, : len(rolls[i].response_ids)].detach()
        for i, r in enumerate(rolls):
            r.old_logprobs = old[i].tolist()

        # PPO
        lr = self.lr(u)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        stats = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_frac": 0.0, "approx_kl": 0.0}
        grad_norm = 0.0
        fb_tokens = 0
        for epoch in range(t.ppo_epochs):
            idx = (
                order
                if epoch == 0
                else random.Random(derive_seed(t.seed, "shuffle", u, epoch)).sample(order, len(order))
            )
            self.optimizer.zero_grad(set_to_none=True)
            for mb in self._micro_batches(idx):
                ids, att, pos, resp, rmask = pol.pack([rolls[i] for i in mb], pad, self.device)
                lp, ent = pol.response_logprobs(
                    self.model,
                    ids,
                    att,
                    pos,
                    resp,
                    temperature=t.temperature,
                    with_entropy=True,
                    autocast=self.autocast,
                )
                old_t = torch.zeros_like(lp)
                ref_t = torch.zeros_like(lp) if t.use_kl else None
                for k, i in enumerate(mb):
                    n = len(rolls[i].response_ids)
                    old_t[k, :n] = old[i]
                    if ref_t is not None:
                        ref_t[k, :n] = ref[i]
                a = torch.tensor([records[i].advantage for i in mb], dtype=torch.float32, device=lp.device)
                out = ppo_loss(
                    lp,
                    old_t,
                    a,
                    rmask,
                    clip_low=t.clip_ratio_low,
                    clip_high=t.clip_ratio_high,
                    dual_clip_c=t.dual_clip_c,
                    ref_logp=ref_t,
                    kl_coef=t.kl_coef if t.use_kl else 0.0,
                    entropy=ent if t.entropy_coef else ent.detach(),
                    entropy_coef=t.entropy_coef,
                )
                w = float(rmask.sum()) / max(1, n_resp_tokens)
                (out.loss * w).backward()
                fb_tokens += int(att.sum())
                if epoch == t.ppo_epochs - 1:
                    stats["loss"] += float(out.loss.detach()) * w
                    stats["pg_loss"] += out.pg_loss * w
                    stats["kl"] += out.kl * w
                    stats["entropy"] += out.entropy * w
                    stats["clip_frac"] += out.clip_frac * w
                    stats["approx_kl"] += out.approx_kl * w
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip))
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t_upd = time.perf_counter() - t1

        self.counters["update"] = u + 1
        self.counters["lr_step"] = u + 1
        self.counters["groups_consumed"] += t.groups_per_batch
        self.counters["epoch"] = (u + 1) // self.updates_per_epoch()

        rewards = np.array([r.reward for r in records])
        a_arr = adv["advantage"]
        metrics = {
            "update": u,
            "epoch": u // self.updates_per_epoch(),
            "lr": lr,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()),
            "valid_rate": float(np.mean([r.valid for r in records])),
            "adv_mean": float(a_arr.mean()),
            "adv_std": float(a_arr.std()),
            "adv_min": float(a_arr.min()),
            "adv_max": float(a_arr.max()),
            "singleton_step_group_frac": float(np.mean(adv["step_group_size"] == 1)),
            **stats,
            "grad_norm": grad_norm,
            "steps": len(records),
            "response_tokens": n_resp_tokens,
            "response_len_mean": n_resp_tokens / max(1, len(records)),
            "tokens_per_s": fb_tokens / max(t_upd, 1e-9),
            "samples_per_s": len(records) / max(t_roll + t_upd, 1e-9),
            "rollout_s": t_roll,
            "update_s": t_upd,
            # rollout_s = generation_s (policy sampling) + env_s (evaluations: executor calls) + bookkeeping
            **getattr(self, "last_timing", {}),
            "prompt_tokens_max": max((len(r.rollout.prompt_ids) for r in records), default=0),
        }
        metrics.update(self._gpu_stats())
        self._record_experiences(u, records)
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

    def _record_experiences(self, update: int, records: list[StepRecord]) -> None:
        from aflowctl.store import Experience, utcnow

        now = utcnow()
        version = f"{self.run_id}@{update}"

        def _add(session):
            for r in records:
                session.add(
                    Experience(
                        run_id=self.run_id,
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

        self.store.transact(_add)

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
