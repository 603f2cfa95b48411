"""`aflowctl report`: PNG, self-contained HTML, markdown numbers, train runs, bad input."""

from __future__ import annotations

import base64
import re

import pytest
from helpers.store_runs import Child, build_optimize_run, build_train_run, ts
from markupsafe import escape
from typer.testing import CliRunner

from aflowctl.cli import app
from aflowctl.errors import NotFoundError
from aflowctl.reporting import history as report
from aflowctl.store import Run, open_store

runner = CliRunner()

# rounds of the run used in most tests (see tests/helpers/store_runs.py for the timing and costs)
PLAN = [
    ("root", [Child("a", "wrap the answer in a 3-sample ScEnsemble", [0.6, 0.7, 0.65])]),
    ("a", [Child("b", "add a Programmer step", None), Child("c", "add a review step", [0.55, 0.6, 0.5])]),
    ("a", [Child("d", "malformed response", None, has_code=False, error="no <graph> block in the response")]),
    ("a", [Child("e", "revise the solve prompt", [0.8, 0.75, 0.7], test=[0.72])]),
]
# by hand: optimizer 0.01 per proposal, executor 0.002 per validation/test repeat, cached calls free
EXPECTED_CUMULATIVE = [0.006, 0.006 + 0.016, 0.022 + 0.026, 0.048 + 0.010, 0.058 + 0.016]
EXPECTED_RUNNING_BEST = [0.5, 0.65, 0.65, 0.65, 0.75]
EXPECTED_TOTAL = 0.074 + 2 * 0.002  # two test repeats after the last round


@pytest.fixture
def store():
    st = open_store()
    build_optimize_run(st, "opt-a", PLAN, root_test=[0.4])
    return st


def _png_ok(path):
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert w >= 800 and h >= 500
        colors = im.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colors is not None and len(colors) > 50  # not a blank canvas
    return data


def test_gather_rounds_spend_and_best(store):
    data = report.gather(store, "opt-a")
    rounds = data["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert [r["running_best"] for r in rounds] == pytest.approx(EXPECTED_RUNNING_BEST)
    assert [r["cumulative_cost_usd"] for r in rounds] == pytest.approx(EXPECTED_CUMULATIVE)
    assert [r["proposals"] for r in rounds] == [1, 1, 2, 1, 1]
    assert [r["valid"] for r in rounds] == [1, 1, 1, 0, 1]
    assert rounds[3]["best_score"] is None and rounds[2]["best_score"] == pytest.approx(0.55)
    assert data["total_cost_usd"] == pytest.approx(EXPECTED_TOTAL)
    assert data["cost_after_last_round_usd"] == pytest.approx(0.004)
    assert data["spend_by_role"]["optimizer"]["cost_usd"] == pytest.approx(0.05)
    assert data["spend_by_role"]["executor"]["cost_usd"] == pytest.approx(0.028)
    assert data["spend_by_role"]["executor"]["cached_calls"] == 4
    best = data["best"]
    assert best["round"] == 5 and best["score"] == pytest.approx(0.75) and best["test_score"] == pytest.approx(0.72)
    assert best["std"] == pytest.approx(0.0408248, abs=1e-6)
    assert [n["modification"] for n in data["lineage"]] == [None, "wrap the answer in a 3-sample ScEnsemble", "revise the solve prompt"]
    assert (data["proposals"], data["valid_modifications"], data["improvements"]) == (5, 3, 2)
    assert [f["modification"] for f in data["failed_proposals"]] == ["malformed response"]


def test_report_cli_writes_png_and_self_contained_html(store, tmp_path):
    out = tmp_path / "rep"
    r = runner.invoke(app, ["report", "opt-a", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout.split() == [str(out / "report.png"), str(out / "report.html")]
    png = _png_ok(out / "report.png")
    page = (out / "report.html").read_text(encoding="utf-8")
    # the PNG is embedded, identical
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m and base64.b64decode(m.group(1)) == png
    # self-contained: no scripts, no stylesheets or images fetched from anywhere
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page, re.I)
    assert all(v.startswith(("data:", "#")) for v in re.findall(r'(?:src|href)="([^"]*)"', page))
    assert "http://" not in page and "https://" not in page
    # modifications, errors and the diffs against the parent
    for c in ["wrap the answer in a 3-sample ScEnsemble", "add a Programmer step", "add a review step",
              "revise the solve prompt", "malformed response", "no &lt;graph&gt; block in the response"]:
        assert str(escape(c)) in page or c in page, c
    assert '<span class="del">-        solution = await self.custom(input=problem, instruction=prompt_custom.SOLVE_PROMPT)</span>' in page
    assert '<span class="add">+        solution = await self.custom(input=problem, instruction=prompt_custom.PROMPT_A)</span>' in page
    assert "+PROMPT_A = " + str(escape('"""wrap the answer')) in page  # escaped, as every value
    assert page.count("<details") >= 10  # collapsible tree nodes and diffs
    assert "[invalid]" in page and "0.7500 ± 0.0408 (n=3)" in page


def test_report_default_folder_is_the_run_dir(store):
    from aflowctl import paths

    r = runner.invoke(app, ["report", "opt-a"])
    assert r.exit_code == 0, r.output
    assert (paths.run_dir("opt-a") / "report.png").is_file()
    assert (paths.run_dir("opt-a") / "report.html").is_file()


def _md_table(md: str, header_start: str) -> list[list[str]]:
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_markdown_numbers_match_the_data(store):
    r = runner.invoke(app, ["report", "opt-a", "--format", "md"])
    assert r.exit_code == 0, r.output
    md = r.stdout
    rows = _md_table(md, "| round |")
    assert [int(x[0]) for x in rows] == [1, 2, 3, 4, 5]
    assert [x[1] for x in rows] == ["—", "1", "2", "2", "2"]  # parents: workflow ids
    assert [int(x[2]) for x in rows] == [1, 1, 2, 1, 1]
    assert [int(x[3]) for x in rows] == [1, 1, 1, 0, 1]
    assert [x[4] for x in rows] == ["0.5000", "0.6500", "0.5500", "—", "0.7500"]
    assert [float(x[5]) for x in rows] == pytest.approx(EXPECTED_RUNNING_BEST)
    assert [float(x[6]) for x in rows] == pytest.approx(EXPECTED_CUMULATIVE, abs=5e-5)
    assert f"total spend: ${EXPECTED_TOTAL:.4f}" in md
    assert "workflow 5 (round 5): validation 0.7500 ± 0.0408 over 3 repeats; test 0.7200" in md
    roles = {x[0]: x for x in _md_table(md, "| role |")}
    assert roles["optimizer"][1:] == ["5", "0", "600", "0.0500"]
    assert roles["executor"][1:] == ["18", "4", "2160", "0.0280"]
    assert "prompt_custom.PROMPT_A" in md  # the best workflow's graph


def test_train_run_report(tmp_path):
    st = open_store()
    build_train_run(st, "train-a", updates=6)
    r = runner.invoke(app, ["report", "train-a", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    _png_ok(tmp_path / "report.png")
    page = (tmp_path / "report.html").read_text()
    assert "reward_mean" in page and "entropy" in page and "<script" not in page
    md = runner.invoke(app, ["report", "train-a", "--format", "md"]).stdout
    rows = _md_table(md, "| update |")
    assert [int(x[0]) for x in rows] == list(range(6))
    header = [c.strip() for c in next(l for l in md.splitlines() if l.startswith("| update |")).strip("|").split("|")]
    loss = header.index("loss")
    assert [float(x[loss]) for x in rows] == pytest.approx([1.0 / (u + 1) for u in range(6)], abs=5e-5)
    rmean = header.index("reward_mean")
    assert [float(x[rmean]) for x in rows] == pytest.approx([0.1 * u for u in range(6)], abs=5e-5)
    assert "6 calls had no known price" in md  # the local executor calls of the helper have cost None


def test_empty_run_still_reports(tmp_path):
    st = open_store()
    with st.write() as s:
        s.add(Run(id="opt-empty", kind="optimize", dataset="gsm8k", status="running", created_at=ts(0), updated_at=ts(0)))
    r = runner.invoke(app, ["report", "opt-empty", "--format", "md"])
    assert r.exit_code == 0, r.output
    assert "No workflow has been evaluated yet." in r.stdout
    r = runner.invoke(app, ["report", "opt-empty", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report.png").stat().st_size > 5_000


def test_unknown_run(store):
    with pytest.raises(NotFoundError):
        report.gather(store, "nope")
    r = runner.invoke(app, ["report", "nope"])
    assert r.exit_code == 1
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "run 'nope' does not exist" in lines[0] and "opt-a" in lines[0]


def test_out_is_a_file(store, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = runner.invoke(app, ["report", "opt-a", "--out", str(f)])
    assert r.exit_code == 1 and "is a file" in r.stderr


def test_bad_format(store):
    r = runner.invoke(app, ["report", "opt-a", "--format", "pdf"])
    assert r.exit_code == 2


def test_the_html_template_ships_as_package_data():
    import fnmatch
    import tomllib
    from pathlib import Path

    import aflowctl

    pkg = Path(aflowctl.__file__).parent
    meta = tomllib.loads((pkg.parent / "pyproject.toml").read_text())
    patterns = meta["tool"]["setuptools"]["package-data"]["aflowctl"]
    templates = [p.relative_to(pkg).as_posix() for p in (pkg / "reporting" / "templates").iterdir()]
    assert templates and all(any(fnmatch.fnmatch(t, pat) for pat in patterns) for t in templates)
    assert any(d.startswith("jinja2") for d in meta["project"]["dependencies"])


def test_inspect_and_report_show_the_same_workflow_diff(store):
    import json

    data = report.gather(store, "opt-a")
    r = runner.invoke(app, ["inspect", "workflows", "--run", "opt-a", "--diff", "--json"])
    assert r.exit_code == 0, r.output
    shown = {w["id"]: w["diff"] for w in json.loads(r.stdout)}
    for w in data["workflows"]:
        expected = w["diff"] or ("(no parent)" if w["parent_id"] is None else "(identical)")
        assert shown[w["id"]] == expected
    assert any(w["diff"].startswith("--- workflow ") for w in data["workflows"])
    r = runner.invoke(app, ["inspect", "workflows", "--run", "nope"])
    assert r.exit_code == 1 and "run 'nope' does not exist" in r.stderr and "opt-a" in r.stderr
