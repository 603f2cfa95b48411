"""`aflowctl compare`: fields and values on a case computed by hand, statistics, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from aflowctl.cli import app
from aflowctl.errors import NotFoundError, UsageError
from aflowctl.reporting import compare as cmp
from aflowctl.store import open_store
from helpers.store_runs import Child, build_optimize_run, build_train_run

runner = CliRunner()


@pytest.fixture
def two_runs():
    st = open_store()
    # A (prompted model): root 0.5 -> round 2 child 0.6
    build_optimize_run(st, "run-a", [("root", [Child("a1", "ensemble", [0.6, 0.6, 0.6])])], seed=0)
    # B (policy): root 0.5 -> round 2 child 0.4 (no gain) -> round 3 child of root 0.7, tested 0.65;
    # one invalid proposal in round 3
    build_optimize_run(
        st, "run-b",
        [("root", [Child("b1", "drop a step", [0.4, 0.4, 0.4])]),
         ("root", [Child("b2", "programmer", [0.7, 0.7, 0.7], test=[0.65]), Child("b3", "broken", None)])],
        seed=0, policy="ckpt/step-10", t_offset=5000,
    )
    return st


def test_compare_json_values_by_hand(two_runs, tmp_path):
    png = tmp_path / "cmp.png"
    r = runner.invoke(app, ["compare", "run-a", "run-b", "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["dataset"] == "gsm8k" and out["plot"] == str(png)
    a, b = out["runs"]
    assert a["run_id"] == "run-a" and b["run_id"] == "run-b"
    # A: round 1 = 3 executor repeats (0.006); round 2 = 1 proposal (0.01) + 3 repeats (0.006);
    # every paid call has 120 tokens, the cached one is not counted
    assert a["curve"] == [
        {"round": 1, "best_score": pytest.approx(0.5), "cumulative_cost_usd": pytest.approx(0.006),
         "cumulative_tokens": 360, "cumulative_calls": 3},
        {"round": 2, "best_score": pytest.approx(0.6), "cumulative_cost_usd": pytest.approx(0.022),
         "cumulative_tokens": 840, "cumulative_calls": 7},
    ]
    assert (a["calls"], a["tokens"]) == (7, 840)
    # B: round 2 +0.016; round 3: two proposals (0.02) + 3 repeats (0.006); the test repeat (0.002) comes after
    assert [p["best_score"] for p in b["curve"]] == pytest.approx([0.5, 0.5, 0.7])
    assert [p["cumulative_cost_usd"] for p in b["curve"]] == pytest.approx([0.006, 0.022, 0.048])
    assert a["best_score"] == pytest.approx(0.6) and a["best_round"] == 2 and a["test_score"] is None
    assert b["best_score"] == pytest.approx(0.7) and b["best_round"] == 3 and b["test_score"] == pytest.approx(0.65)
    assert b["tested_workflows"] == [{"workflow_id": b["best_workflow_id"], "round": 3, "test_score": pytest.approx(0.65)}]
    assert (a["proposals"], a["valid_modifications"], a["improvements"]) == (1, 1, 1)
    assert (b["proposals"], b["valid_modifications"], b["improvements"]) == (3, 2, 1)
    assert a["spend_by_role"] == {"executor": pytest.approx(0.012), "optimizer": pytest.approx(0.01)}
    assert b["spend_by_role"] == {"executor": pytest.approx(0.02), "policy": pytest.approx(0.03)}
    assert a["cost_usd"] == pytest.approx(0.022) and b["cost_usd"] == pytest.approx(0.05)
    assert a["optimizer"] == "openai/gpt-4o" and b["optimizer"] == "policy:ckpt/step-10"
    # equal budget: the smaller final spend (A's 0.022); B had reached 0.5 by then
    assert out["common_budget_usd"] == pytest.approx(0.022)
    assert a["best_at_common_budget"] == pytest.approx(0.6) and b["best_at_common_budget"] == pytest.approx(0.5)
    assert out["per_round"] == [
        {"round": 1, "run-a": pytest.approx(0.5), "run-b": pytest.approx(0.5)},
        {"round": 2, "run-a": pytest.approx(0.6), "run-b": pytest.approx(0.5)},
        {"round": 3, "run-a": None, "run-b": pytest.approx(0.7)},
    ]
    # two configs (policy differs), one run each: groups but no interval
    assert [g["runs"] for g in out["groups"]] == [["run-a"], ["run-b"]]
    assert out["groups"][0]["config"] == {"optimize.policy": None}
    assert out["groups"][1]["config"] == {"optimize.policy": "ckpt/step-10"}
    assert out["groups"][0]["final_best"] == {"n": 1, "mean": pytest.approx(0.6), "std": None}
    assert out["differences"] == [] and any("no confidence interval" in n for n in out["notes"])
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] >= 1000 and len(im.convert("RGB").getcolors(1_000_000)) > 50


def test_compare_table_and_default_plot(two_runs):
    from aflowctl import paths

    r = runner.invoke(app, ["compare", "run-a", "run-b"])
    assert r.exit_code == 0, r.output
    assert "run-a" in r.stdout and "run-b" in r.stdout and "best score by round" in r.stdout
    expected = paths.home() / "runs" / "compare" / "run-a__run-b.png"
    assert expected.is_file() and expected.stat().st_size > 20_000
    assert f"plot: {expected}" in r.stdout.replace("\n", "")
    r = runner.invoke(app, ["compare", "run-a", "run-b", "--no-plot", "--json"])
    assert json.loads(r.stdout)["plot"] is None


def test_statistics_across_seeds():
    st = open_store()
    base = [0.60, 0.62, 0.58]
    treat = [0.70, 0.74, 0.72]
    base_test = [0.55, 0.57, 0.50]
    treat_test = [0.60, 0.66, 0.62]
    for i, sc in enumerate(base):
        build_optimize_run(st, f"base-{i}", [("root", [Child("x", "m", [sc] * 3, test=[base_test[i]])])], seed=i,
                           t_offset=1000 * i)
    for i, sc in enumerate(treat):
        build_optimize_run(st, f"rl-{i}", [("root", [Child("x", "m", [sc] * 3, test=[treat_test[i]])])], seed=i,
                           policy="ckpt", t_offset=9000 + 1000 * i)
    ids = [f"base-{i}" for i in range(3)] + [f"rl-{i}" for i in range(3)]
    out = cmp.compare_runs(st, ids)
    g0, g1 = out["groups"]
    assert g0["runs"] == ids[:3] and g1["runs"] == ids[3:] and g0["seeds"] == [0, 1, 2]
    assert g0["final_best"]["mean"] == pytest.approx(np.mean(base))
    assert g0["final_best"]["std"] == pytest.approx(np.std(base, ddof=1))
    assert g1["final_best"]["std"] == pytest.approx(np.std(treat, ddof=1))
    assert g1["test"]["mean"] == pytest.approx(np.mean(treat_test))
    assert g0["test"]["std"] == pytest.approx(np.std(base_test, ddof=1))
    d, t = out["differences"]
    assert d["metric"] == "final_best_score" and t["metric"] == "test_score"
    assert d["difference"] == pytest.approx(np.mean(treat) - np.mean(base))
    assert d["ci_low"] <= d["difference"] <= d["ci_high"] and d["excludes_zero"] and d["ci_low"] > 0
    assert t["difference"] == pytest.approx(np.mean(treat_test) - np.mean(base_test))
    # the interval lies within the range of differences any resample can give
    assert min(treat_test) - max(base_test) <= t["ci_low"] <= t["difference"] <= t["ci_high"] <= max(treat_test) - min(base_test)
    assert cmp.compare_runs(st, ids)["differences"] == out["differences"]  # seeded: reproducible
    r = runner.invoke(app, ["compare", *ids, "--no-plot"])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.stdout.split())
    assert "final best validation score, group 1 − group 0: +0.1200" in flat
    assert "test score of the best workflow, group 1 − group 0: +0.0867" in flat


def test_bootstrap_ci_contains_the_true_difference():
    rng = np.random.default_rng(123)
    true_diff = 0.1
    a = rng.normal(0.5, 0.03, size=10)
    b = rng.normal(0.5 + true_diff, 0.03, size=10)
    diff, lo, hi = cmp.bootstrap_diff_ci(a, b)
    assert lo < true_diff < hi and lo > 0
    assert diff == pytest.approx(b.mean() - a.mean())
    # no real difference: the interval contains 0
    c = rng.normal(0.5, 0.03, size=10)
    _, lo0, hi0 = cmp.bootstrap_diff_ci(a, c)
    assert lo0 < 0 < hi0
    # coverage over many constructed experiments is near the nominal 95%
    hits = 0
    for k in range(200):
        r = np.random.default_rng(1000 + k)
        x, y = r.normal(0.4, 0.05, 12), r.normal(0.4 + true_diff, 0.05, 12)
        _, l, h = cmp.bootstrap_diff_ci(x, y, n_boot=2000, seed=k)
        hits += l <= true_diff <= h
    assert 0.85 <= hits / 200 <= 1.0


def test_different_benchmarks_refused(two_runs):
    build_optimize_run(two_runs, "run-math", [], dataset="math", t_offset=20000)
    with pytest.raises(UsageError, match="different benchmarks"):
        cmp.compare_runs(two_runs, ["run-a", "run-math"])
    r = runner.invoke(app, ["compare", "run-a", "run-b", "run-math"])
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert "run-a (gsm8k)" in line and "run-math (math)" in line and len(line.splitlines()) == 1


def test_unknown_and_bad_run_ids(two_runs):
    with pytest.raises(NotFoundError, match="'ghost'"):
        cmp.compare_runs(two_runs, ["run-a", "ghost"])
    r = runner.invoke(app, ["compare", "run-a", "ghost"])
    assert r.exit_code == 1 and "run 'ghost' does not exist" in r.stderr
    with pytest.raises(UsageError, match="at least two"):
        cmp.compare_runs(two_runs, ["run-a"])
    with pytest.raises(UsageError, match="twice"):
        cmp.compare_runs(two_runs, ["run-a", "run-a"])
    build_train_run(two_runs, "train-1")
    with pytest.raises(UsageError, match="train run"):
        cmp.compare_runs(two_runs, ["run-a", "train-1"])


def test_experiment_key_ignores_seed_and_resources():
    from aflowctl.config import Config

    a = Config().model_dump(mode="json", by_alias=True)
    b = Config().model_dump(mode="json", by_alias=True)
    b["optimize"]["seed"] = 7
    b["rollout"]["workers"] = 9
    b["train"]["lr"] = 1.0
    assert cmp.experiment_key(a) == cmp.experiment_key(b)
    b["optimize"]["candidates"] = 4
    assert cmp.experiment_key(a) != cmp.experiment_key(b)


def test_unknown_prices_are_shown_as_unknown_never_as_numbers():
    st = open_store()
    build_optimize_run(st, "priced", [("root", [Child("p1", "ensemble", [0.6, 0.6, 0.6])])], seed=0)
    # the optimizer's model has no price: its calls store cost NULL
    build_optimize_run(
        st, "unpriced", [("root", [Child("u1", "ensemble", [0.6, 0.6, 0.6])])], seed=1, optimizer_cost=None
    )
    r = runner.invoke(app, ["compare", "priced", "unpriced", "--json", "--no-plot"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    p, u = out["runs"]
    assert (p["unpriced_calls"], u["unpriced_calls"]) == (0, 1)
    assert u["unpriced_by_role"]["optimizer"] == 1 and u["calls_by_role"]["optimizer"] == 1
    # a run whose spend is only a lower bound gives no common budget, and a note says why
    assert out["common_budget_usd"] is None
    assert any("price is unknown" in n and "unpriced" in n for n in out["notes"])
    r = runner.invoke(app, ["compare", "priced", "unpriced", "--no-plot"])
    assert r.exit_code == 0, r.output
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip().startswith(("priced", "unpriced"))}
    # the run table and the by-role table: the unpriced optimizer is "unknown", the run total a lower bound
    assert "unknown" in r.stdout and "+ unknown" in r.stdout
    assert "unknown" not in lines["priced"]
    assert "$0.0000" not in r.stdout.split("best workflow and spend by role")[1].split("best score by round")[0]
