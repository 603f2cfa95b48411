"""Does the policy learn? Edit-format GiGPO training on arith, and the three-arm experiment.

    python bench/bench_learning.py --quick --json        # a short training run (<= 10 min on 2 cores)
    python bench/bench_learning.py --updates 12 --json   # the training of configs/train/arith-edit.toml
    python bench/bench_learning.py --experiment DIR      # train, 3 arms x 5 seeds, compare (docs/experiments.md)
    python bench/bench_learning.py --experiment DIR --arms mutate,base   # a second stream, in parallel

Quick / training mode runs ``aflowctl.trainer`` in this process on
``configs/train/arith-edit.toml`` (SmolLM2-135M as policy, edit format, and as
executor) and prints::

    {"valid_rate_first": x, "valid_rate_last": y, "reward_mean_by_update": [...], "updates": n, ...}

plus, per update, the time split of the rollout (``generation_s``: policy sampling;
``env_s``: evaluations, i.e. executor calls; ``update_s``: log-probs, backward and
optimizer step) and the longest prompt and prompt + answer in tokens. ``--quick`` caps
it at 3 updates with 4 validation problems per group.

Experiment mode runs the documented recipe through the CLI (so every step is an
ordinary, resumable aflowctl run in ``DIR/exp.db``; rerunning the same command skips
what finished): ``aflowctl train`` with the config, then for each seed the three arms
at equal rounds and candidates, each with ``--test`` (``mutate``; ``--policy`` the
untrained base model; ``--policy`` the training run), then ``aflowctl compare`` of
trained vs base and trained vs mutate. Logs and JSON outputs go to ``DIR``.
Tune nothing on the test split: the config is fixed before the arms run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "train" / "arith-edit.toml"


def train_run(config: Path, *, updates: int, quick: bool, home: Path | None) -> dict:
    if home is not None:
        os.environ["AFLOWCTL_HOME"] = str(home)
    from aflowctl.config import load_config
    from aflowctl.store import open_store
    from aflowctl.trainer.loop import Trainer

    overrides = {"train.groups_per_epoch": updates, "train.checkpoint_every": max(updates, 1)}
    if quick:
        overrides.update({"train.validation_limit": 4})
    cfg = load_config(config, overrides)
    store = open_store()
    t0 = time.perf_counter()
    res = Trainer(cfg, store=store, max_updates=updates).run()
    wall = time.perf_counter() - t0
    ms = [m for m in res.metrics if "reward_mean" in m]
    lens = _token_lengths(store, res.run_id)
    return {
        "valid_rate_first": ms[0]["valid_rate"] if ms else None,
        "valid_rate_last": ms[-1]["valid_rate"] if ms else None,
        "reward_mean_by_update": [round(m["reward_mean"], 4) for m in ms],
        "updates": len(ms),
        "valid_rate_by_update": [round(m["valid_rate"], 4) for m in ms],
        "generation_s_by_update": [round(m.get("generation_s", 0.0), 1) for m in ms],
        "env_s_by_update": [round(m.get("env_s", 0.0), 1) for m in ms],
        "update_s_by_update": [round(m["update_s"], 1) for m in ms],
        "prompt_tokens_max": max((m.get("prompt_tokens_max", 0) for m in ms), default=0),
        "prompt_plus_answer_tokens_max": lens,
        "G": cfg.train.episodes_per_group,
        "T": cfg.train.steps_per_episode,
        "validation_limit": cfg.train.validation_limit,
        "run_id": res.run_id,
        "wall_s": round(wall, 1),
    }


def _token_lengths(store, run_id: str) -> int:
    """The longest prompt + answer of the run, in the policy's tokens."""
    from aflowctl.store import queries
    from aflowctl.trainer import policy as pol

    _, tok = pol.load_policy(pol.resolve_policy_path(None))
    best = 0
    for r in queries.list_experiences(store, run_id=run_id):
        ids = pol.render_prompt_ids(tok, json.loads(r["prompt"]))
        best = max(best, len(ids) + len(tok(r["action_text"] or "")["input_ids"]))
    return best


# --------------------------------------------------------------------------- experiment


def _cli(args: list[str], log: Path, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "aflowctl.cli", *args]
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        t0 = time.time()
        p = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=fh, text=True, env=env)
        fh.write(p.stdout + f"\n# exit {p.returncode} after {time.time() - t0:.0f} s\n")
    return p


def _status(db: Path, run_id: str) -> str | None:
    import sqlite3

    if not db.exists():
        return None
    row = sqlite3.connect(db).execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    return row[0] if row else None


def experiment(
    out: Path,
    config: Path,
    seeds: list[int],
    arms_wanted: tuple[str, ...] = ("mutate", "base", "trained"),
    *,
    tag: str = "",
    epochs: int | None = None,
    train_seed: int | None = None,
) -> dict:
    """The recipe above; ``tag`` names a variant (its own training run ``arith-edit-train-TAG``
    and its own runs of the arms whose policy reads the observation, ``arith-trained-TAG-sN``
    and ``arith-base-TAG-sN``; the ``mutate`` runs, which do not read it, are shared),
    ``epochs`` overrides ``train.epochs`` and ``train_seed`` the training run's seed."""
    out.mkdir(parents=True, exist_ok=True)
    db, log = out / "exp.db", out / "log.txt"
    env = dict(os.environ)
    env.setdefault("AFLOWCTL_HOME", str(out / "home"))
    common = ["--config", str(config), "--db", str(db)]
    suffix = f"-{tag}" if tag else ""
    train_id = f"arith-edit-train{suffix}"
    st = _status(db, train_id)
    if "trained" in arms_wanted and st != "completed":
        args = ["train", *common, "--json"] + (["--resume", train_id] if st else ["--run-id", train_id])
        args += ["--epochs", str(epochs)] if epochs else []
        args += ["--seed", str(train_seed)] if train_seed is not None else []
        p = _cli(args, log, env)
        (out / f"train{suffix}.json").write_text(p.stdout)
        if p.returncode != 0:
            return {"stage": "train", "exit": p.returncode}
    sys.path.insert(0, str(REPO))
    from aflowctl.trainer.policy import resolve_policy_path

    base = str(resolve_policy_path(None))
    arms = {"mutate": [], "base": ["--policy", base], "trained": ["--policy", train_id]}
    arms = {a: v for a, v in arms.items() if a in arms_wanted}
    runs: dict[str, list[str]] = {a: [] for a in ("mutate", "base", "trained")}
    for seed in seeds:
        for arm, extra in arms.items():
            rid = f"arith-{arm}{suffix if arm != 'mutate' else ''}-s{seed}"
            st = _status(db, rid)
            if st not in ("completed", "converged"):
                args = ["optimize", *common, "--seed", str(seed), "--test", "--json", *extra]
                args += ["--resume", rid] if st else ["--run-id", rid]
                p = _cli(args, log, env)
                (out / f"{rid}.json").write_text(p.stdout)
                if p.returncode != 0:
                    continue
            runs[arm].append(rid)
    result: dict = {"runs": runs}
    for arm in ("mutate", "base", "trained"):  # runs another invocation finished (--arms in parallel streams)
        for seed in seeds:
            rid = f"arith-{arm}{suffix if arm != 'mutate' else ''}-s{seed}"
            if rid not in runs[arm] and _status(db, rid) in ("completed", "converged"):
                runs[arm].append(rid)
    for other in ("base", "mutate"):
        if runs["trained"] and runs[other]:
            p = _cli(["compare", *runs["trained"], *runs[other], "--db", str(db), "--json", "--no-plot"], log, env)
            (out / f"compare-trained{suffix}-vs-{other}.json").write_text(p.stdout)
            result[f"compare_vs_{other}"] = f"compare-trained{suffix}-vs-{other}.json"
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 updates, 4 problems per group (<= 10 minutes on 2 cores)")
    ap.add_argument("--updates", type=int, default=None, help="updates to train (default 12, --quick 3)")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument(
        "--home", type=Path, default=None, help="AFLOWCTL_HOME for the training run (default: a temporary one)"
    )
    ap.add_argument("--experiment", type=Path, default=None, help="run the full experiment into this folder")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--arms", default="mutate,base,trained", help="arms to run (the trained arm trains first)")
    ap.add_argument(
        "--tag", default="", help="experiment: a variant (own training and policy-arm runs, shared mutate runs)"
    )
    ap.add_argument("--epochs", type=int, default=None, help="experiment: override train.epochs of the training")
    ap.add_argument("--train-seed", type=int, default=None, help="experiment: the training run's seed")
    ap.add_argument("--json", action="store_true", help="print only the JSON summary")
    a = ap.parse_args()
    os.environ.setdefault("AFLOWCTL_LOAD_PLUGINS", "aflowctl-arith")
    from aflowctl import paths

    os.environ.setdefault("AFLOWCTL_MODELS_DIR", str(paths.models_dir()))  # converted models are reused, not redone
    if a.experiment is not None:
        seeds = [int(s) for s in a.seeds.split(",")]
        out = experiment(
            a.experiment, a.config, seeds, tuple(a.arms.split(",")), tag=a.tag, epochs=a.epochs, train_seed=a.train_seed
        )
    else:
        import tempfile

        home = a.home or Path(tempfile.mkdtemp(prefix="bench-learning-"))
        out = train_run(a.config, updates=a.updates or (3 if a.quick else 12), quick=a.quick, home=home)
    if not a.json:
        print(f"bench_learning ({'quick' if a.quick else 'full'}):", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
