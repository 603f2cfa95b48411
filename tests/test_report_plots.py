"""Plots of degenerate runs: nothing priced ($0), one training update, no updates,
many runs in one comparison. Each renders without a single warning, and draws what
the run has rather than an empty spend line or a dot on a meaningless axis."""

from __future__ import annotations

import warnings

import pytest
from helpers.store_runs import Child, build_optimize_run, build_train_run, ts

from aflowctl.reporting import compare, history, plots
from aflowctl.store import Run, open_store

PLAN = [("root", [Child("a", "add a review step", [0.6, 0.7, 0.65])]),
        ("a", [Child("b", "revise the prompt", [0.7, 0.75, 0.7])])]


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _overlaps(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    return data


def test_unpriced_optimize_run_plots_tokens_not_a_zero_spend_line(tmp_path):
    st = open_store()
    build_optimize_run(st, "free", PLAN, optimizer_model="local/smollm2", executor_model="local/smollm2",
                       optimizer_cost=None, executor_cost=None)
    data = history.gather(st, "free")
    assert data["total_cost_usd"] == 0 and data["total_tokens"] > 0
    fig = plots.optimize_figure(data)
    try:
        usage = fig.axes[1]  # the twin axis
        assert usage.get_ylabel() == "cumulative tokens (nothing priced)"
        (line,) = usage.get_lines()
        assert list(line.get_ydata()) == [r["cumulative_tokens"] for r in data["rounds"]]
        assert min(line.get_ydata()) > 0
    finally:
        plots._pyplot().close(fig)
    _png(plots.plot(data, tmp_path / "free.png"))


def test_compare_of_unpriced_runs_draws_tokens_then_calls(tmp_path):
    st = open_store()
    for i, rid in enumerate(("free-a", "free-b")):
        build_optimize_run(st, rid, PLAN, seed=i, optimizer_cost=0.0, executor_cost=0.0)
    result = compare.compare_runs(st, ["free-a", "free-b"], n_boot=200)
    fig = plots.comparison_figure(result)
    try:
        ax2 = fig.axes[1]
        assert ax2.get_xlabel() == "cumulative tokens (nothing priced)"
        xs = sorted({x for line in ax2.get_lines() for x in line.get_xdata()})
        assert len(xs) > 1 and xs[0] > 0  # a curve over tokens, not a vertical line at $0
        assert not any(line.get_label() == "common budget" for line in ax2.get_lines())
    finally:
        plots._pyplot().close(fig)
    # calls only (no tokens recorded): the panel counts calls
    for s in result["runs"]:
        for p in s["curve"]:
            p["cumulative_tokens"] = 0
    assert plots.usage_axis([p for s in result["runs"] for p in s["curve"]])[0] == "cumulative_calls"
    _png(plots.plot_comparison(result, tmp_path / "calls.png"))


def test_many_runs_legend_sits_outside_the_axes(tmp_path):
    st = open_store()
    ids = [f"r{i}" for i in range(9)]
    for i, rid in enumerate(ids):
        build_optimize_run(st, rid, PLAN[: 1 + i % 2], seed=i, t_offset=i)
    result = compare.compare_runs(st, ids, n_boot=200)
    fig = plots.comparison_figure(result)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (legend,) = fig.legends
        assert len(legend.get_texts()) == len(ids) + 1  # every run and the common budget
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not _overlaps(box, ax.get_window_extent(renderer))
        assert all(ax.get_legend() is None for ax in fig.axes)
    finally:
        plots._pyplot().close(fig)
    _png(plots.plot_comparison(result, tmp_path / "many.png"))


def test_one_update_training_run_has_markers_values_and_sensible_axes(tmp_path):
    st = open_store()
    build_train_run(st, "t1", updates=1)
    data = history.gather(st, "t1")
    fig = plots.train_figure(data)
    try:
        panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
        assert {"reward_mean", "loss", "kl", "entropy", "valid_rate"} <= set(panels)
        m = data["metrics"][0]
        for key, ax in panels.items():
            (line, *_) = ax.get_lines()
            assert line.get_marker() == "o" and line.get_markersize() >= 5
            lo, hi = ax.get_ylim()
            assert lo <= min(0.0, m[key]) and hi >= max(0.0, m[key])  # 0 and the value are on the axis
            assert hi - lo >= 0.2, (key, lo, hi)  # not a ±0.04 axis around one dot
            assert ax.get_xlim() == (-1.0, 1.0)
            assert [t.get_text() for t in ax.texts] == [f"{m[key]:.4g}"]
        assert panels["valid_rate"].get_ylim() == (-0.05, 1.05)
        assert "1 update " in fig._suptitle.get_text()
    finally:
        plots._pyplot().close(fig)
    _png(plots.plot(data, tmp_path / "one.png"))


def test_runs_without_data_render(tmp_path):
    st = open_store()
    with st.write() as s:
        s.add(Run(id="t0", kind="train", dataset="arith", status="running", config_json="{}", created_at=ts(0),
                  updated_at=ts(0)))
        s.add(Run(id="o0", kind="optimize", dataset="gsm8k", status="running", created_at=ts(0), updated_at=ts(0)))
    _png(plots.plot(history.gather(st, "t0"), tmp_path / "t0.png"))
    _png(plots.plot(history.gather(st, "o0"), tmp_path / "o0.png"))
    build_optimize_run(st, "one-round", [])
    build_optimize_run(st, "one-round-b", [], seed=1)
    result = compare.compare_runs(st, ["one-round", "one-round-b"], n_boot=200)
    _png(plots.plot_comparison(result, tmp_path / "single.png"))
