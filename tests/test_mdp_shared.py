"""The one search MDP, driven from `optimize` and from `train`: same answers, same verdicts;
errors that are not the answer's fault stop the run; common random numbers in a GiGPO group."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest
from helpers.openai_server import OpenAIServer
from test_optimize_e2e import DATA, executor_reply
from typer.testing import CliRunner

from aflowctl.cli import app
from aflowctl.config import load_config
from aflowctl.errors import ProviderError
from aflowctl.mdp.core import EvalPlan, SearchMDP, SearchState

runner = CliRunner()
pytestmark = pytest.mark.skipif(not (DATA / "gsm8k_validate.jsonl").exists(), reason="needs ../shared/data/aflow")

RAISING_GRAPH = """from aflowctl.workflow.api import operator, create_llm_instance

class Workflow:
    def __init__(self, name, llm_config, dataset):
        self.llm = create_llm_instance(llm_config)
        self.custom = operator.Custom(self.llm)

    async def __call__(self, problem):
        raise ValueError("boom")
"""
ANSWERS = {  # (action format, answer text)
    "edit": [
        '{"edit": "ensemble", "k": 3}',
        "I think an ensemble would help.",
        '{"edit": "shuffle", "k": 3}',
        '{"edit": "ensemble", "k": 1}',
        '{"edit": "remove", "step": "review"}',
        '{"edit": "add", "step": "programmer"}',  # Programmer is not an allowed operator here
        f'<modification>x</modification><graph>\n{RAISING_GRAPH}</graph><prompt>\nX = "a"\n</prompt>',
    ],
    "code": [
        f'<modification>raise</modification><graph>\n{RAISING_GRAPH}</graph><prompt>\nX = "a"\n</prompt>',
        '{"edit": "ensemble", "k": 3}',
        "<modification>half</modification><graph>class Workflow:",
    ],
}
OPT_MARKS = ("You improve agentic workflows", "You improve a workflow")


def _server(answers: list[str]) -> OpenAIServer:
    def responder(messages, body):
        if any(m in messages[0].get("content", "") for m in OPT_MARKS):
            k = (int(body["seed"]) - (3 * 1_000_003 + 2 * 101)) % len(answers)  # candidate k of round 2, seed 3
            return answers[k]
        return executor_reply("\n".join(str(m.get("content")) for m in messages))

    return OpenAIServer(responder=responder).start()


def _config(tmp_path: Path, server: OpenAIServer, fmt: str, k: int, extra_opt: str = "") -> Path:
    p = tmp_path / f"{fmt}.toml"
    p.write_text(f"""
[llm]
max_retries = 0
[rollout]
workers = 1
concurrency = 4
[optimize]
dataset = "gsm8k"
operators = ["Custom", "ScEnsemble"]
max_rounds = 2
validation_rounds = 1
validation_limit = 3
candidates = {k}
max_retries = 0
check_convergence = false
seed = 3
action_format = "{fmt}"
{extra_opt}
[optimize.optimizer]
model = "openai/test-opt"
api_base = "{server.url}"
[optimize.executor]
model = "openai/test-exec"
api_base = "{server.url}"
[train]
datasets = ["gsm8k"]
validation_limit = 3
action_format = "{fmt}"
[train.executor]
model = "openai/test-exec"
api_base = "{server.url}"
""")
    return p


@pytest.mark.parametrize("fmt", ["edit", "code"])
def test_same_answer_same_validity_and_error_in_optimize_and_train(tmp_path, monkeypatch, fmt):
    from aflowctl.store import open_store
    from aflowctl.trainer.env import WorkflowEnv

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")
    answers = ANSWERS[fmt]
    server = _server(answers)
    try:
        cfg_path = _config(tmp_path, server, fmt, len(answers))
        db = tmp_path / "s.db"
        r = runner.invoke(app, ["optimize", "--config", str(cfg_path), "--db", str(db), "--run-id", "o1", "--json"])
        assert r.exit_code == 0, r.output
        conn = sqlite3.connect(db)
        rows = conn.execute(
            "SELECT episode_id, valid, error, modification FROM experiences WHERE run_id = 'o1'"
        ).fetchall()
        by_k = {int(e.rsplit("/k", 1)[1]): (bool(v), err, mod) for e, v, err, mod in rows}
        assert len(by_k) == len(answers)

        env = WorkflowEnv(load_config(cfg_path), store=open_store(db), run_id="o1")
        try:
            (start,) = env.start_states()
            import copy

            states = [copy.deepcopy(start) for _ in answers]
            trans = env.step_batch(states, answers, rng=random.Random(0))
        finally:
            env.close()
        for k, tr in enumerate(trans):
            valid, err, mod = by_k[k]
            assert tr.valid == valid, (k, tr.error, err)
            assert tr.error == err, k  # the same one-line reason, word for word
            assert tr.info.get("modification") == mod
            if not valid:
                assert err and "\n" not in err
        if fmt == "edit":
            assert trans[0].valid and [t.valid for t in trans[1:]] == [False] * (len(answers) - 1)
            errs = [t.error for t in trans[1:]]
            assert "not JSON" in errs[0] and "unknown edit 'shuffle'" in errs[1] and "at least 2" in errs[2]
            assert (
                "has no review step" in errs[3]
                and "Programmer is not allowed" in errs[4]
                and "mixes formats" in errs[5]
            )
        else:
            assert "smoke run" in trans[0].error and "boom" in trans[0].error
            assert "action format is code" in trans[1].error and "<graph>" in trans[2].error
    finally:
        server.stop()


def test_an_error_that_is_not_the_answers_fault_stops_the_run(tmp_path, monkeypatch):
    """A missing optimizer key is not an invalid proposal: the run fails, resumable, nothing recorded as tried."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")
    monkeypatch.delenv("AFLOWCTL_TEST_NO_SUCH_KEY", raising=False)
    server = _server(['{"edit": "ensemble", "k": 3}'])
    try:
        cfg = _config(tmp_path, server, "edit", 1)
        cfg.write_text(
            cfg.read_text().replace(
                'model = "openai/test-opt"\n', 'model = "openai/test-opt"\napi_key_env = "AFLOWCTL_TEST_NO_SUCH_KEY"\n'
            )
        )
        db = tmp_path / "k.db"
        # the provider preflight refuses it before any run exists; past it (--no-preflight), the run stops at the call
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "k0"])
        assert r.exit_code != 0 and "AFLOWCTL_TEST_NO_SUCH_KEY" in r.stderr
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "k1", "--no-preflight"])
        assert r.exit_code != 0
        assert "AFLOWCTL_TEST_NO_SUCH_KEY" in r.stderr
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT status FROM runs WHERE id = 'k1'").fetchone()[0] == "failed"
        assert conn.execute("SELECT COUNT(*) FROM experiences WHERE run_id = 'k1'").fetchone()[0] == 0
        # with the key set, the same run resumes and completes round 2
        monkeypatch.setenv("AFLOWCTL_TEST_NO_SUCH_KEY", "sk-test-not-a-real-key-123456")
        r = runner.invoke(app, ["optimize", "--resume", "k1", "--db", str(db), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["rounds"] == 2
    finally:
        server.stop()


def test_executor_failures_in_the_smoke_run_are_raised_not_invalid(shared_data):
    """A provider error (401, 429 after retries) inside the smoke run is re-raised as its class."""
    from aflowctl.rollout.evaluate import EvalResult
    from aflowctl.workflow.seeds import seed_workflow

    def evaluate(src, *, indices, seed, repeats=1, workflow_id=None, store_rows=False):
        details = [
            {
                "repeat": 0,
                "index": i,
                "score": 0.0,
                "error": "openai/test-exec: 429 Too Many Requests after 5 retries",
                "error_type": "ProviderError",
            }
            for i in indices
        ]
        return EvalResult("gsm8k", "validate", 0.0, [0.0], 0.0, len(indices), 1, None, 0, details=details)

    mdp = SearchMDP(dataset="gsm8k", operators=["Custom", "ScEnsemble"], action_format="edit", evaluate=evaluate)
    state = SearchState(source=seed_workflow("gsm8k"), score=0.5)
    with pytest.raises(ProviderError, match="429"):
        mdp.check(state, '{"edit": "ensemble", "k": 3}', EvalPlan(indices=(0, 1), seed=1))
    with pytest.raises(ProviderError, match="not the workflow's fault"):
        mdp.evaluate(state.source, EvalPlan(indices=(0, 1), seed=1))
    from aflowctl.mdp.core import infrastructure_class

    assert infrastructure_class("ProviderError") is ProviderError
    assert infrastructure_class("BudgetExceeded") is not None and infrastructure_class("RolloutError") is not None
    for own in ("KeyError", "ValueError", "WorkflowError", None, "NoSuchError"):
        assert infrastructure_class(own) is None  # the workflow's own failure: an invalid action or a wrong answer


def test_common_random_numbers_within_a_group(tmp_path, monkeypatch):
    """Every evaluation of a group (its parent and all children) uses the group's problems and executor
    seed; the draw depends on the run seed and the group only."""
    from aflowctl.mdp.core import PoolEvaluator
    from aflowctl.store import open_store
    from aflowctl.trainer.env import WorkflowEnv

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")
    server = _server([])
    try:
        cfg = load_config(_config(tmp_path, server, "edit", 1))
        store = open_store(tmp_path / "c.db")
        calls: list[tuple] = []
        env = WorkflowEnv(cfg, store=store)
        real = PoolEvaluator(
            store, dataset="gsm8k", executor=cfg.train.executor, llm_cfg=cfg.llm, rollout_cfg=cfg.rollout, run_id=None
        )

        def spy(src, *, indices, seed, **kw):
            calls.append((src.graph, tuple(indices), seed))
            return real(src, indices=indices, seed=seed, **kw)

        env._evaluate = spy
        try:
            (start,) = env.start_states()
            import copy

            groups = ["u0/g0"] * 3 + ["u0/g1"] * 3
            states = [copy.deepcopy(start) for _ in groups]
            env.prepare(states, random.Random(0), groups=groups)
            answers = [
                '{"edit": "ensemble", "k": 3}',
                '{"edit": "ensemble", "k": 5}',
                '{"edit": "instruction", "step": "answer", "text": "Work in numbered steps."}',
            ] * 2
            trans = env.step_batch(states, answers, rng=random.Random(0))
        finally:
            env.close()
            real.close()
        assert all(t.valid for t in trans)
        plans = {g: states[i].data["plan"] for i, g in enumerate(groups)}
        assert len(plans["u0/g0"].indices) == 3 and plans["u0/g0"] != plans["u0/g1"]
        for g in ("u0/g0", "u0/g1"):
            mine = [c for c in calls if (c[1], c[2]) == (plans[g].indices, plans[g].seed)]
            assert len(mine) == 4  # the start workflow and its 3 distinct children, all on the same plan
            assert mine[0][0] == start.data["search"].source.graph  # the parent is scored on the group's problems
        assert len(calls) == 8
        # rewards compare child and parent on the same problems
        for t, s in zip(trans, states):
            assert t.info["score_before"] == s.data["search"].score
        # the same run seed and group key give the same plan; another seed another one
        env2 = WorkflowEnv(cfg, store=store)
        assert env2.plan_for("gsm8k", "u0/g1") == plans["u0/g1"]
        other = WorkflowEnv(
            load_config(None, {"train.datasets": ["gsm8k"], "train.seed": 9, "train.validation_limit": 3})
        )
        assert other.plan_for("gsm8k", "u0/g1") != plans["u0/g1"]
    finally:
        server.stop()


def test_carried_experience_shows_earlier_tries_and_refuses_repeats(tmp_path, monkeypatch):
    """train.carry_experience: a group's start state lists what earlier updates tried from it (read
    back from the run's experiences, latest outcome per modification) and a repeat is invalid."""
    import copy
    from types import SimpleNamespace

    from aflowctl.store import Experience, open_store, runs, utcnow
    from aflowctl.trainer.env import WorkflowEnv
    from aflowctl.trainer.episodes import carried_tries

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")
    server = _server([])
    try:
        cfg = load_config(_config(tmp_path, server, "edit", 1))
        store = open_store(tmp_path / "x.db")
        runs.create_run(store, kind="train", cfg=cfg, run_id="t1").lease.release()
        env = WorkflowEnv(cfg, store=store, run_id="t1")
        (start,) = env.start_states()
        ens = '{"edit": "ensemble", "k": 3}'
        rows = [  # (update, step, anchor, modification, valid, score_after, error)
            (0, 0, start.anchor, ens, True, 0.5, None),
            (0, 0, start.anchor, None, False, None, "the answer is not JSON"),
            (0, 1, "child", '{"edit": "ensemble", "k": 5}', True, 0.5, None),
            (1, 0, start.anchor, '{"edit": "add", "step": "review"}', True, 0.25, None),
            (1, 0, start.anchor, ens, False, None, "already tried"),
            (2, 0, start.anchor, '{"edit": "remove", "step": "review"}', True, 0.5, None),
        ]

        def add(session):
            for u, step, anc, mod, valid, after, err in rows:
                session.add(
                    Experience(
                        run_id="t1", round=u, group_id=f"g{u}", episode_id="e", step=step, anchor=anc,
                        modification=mod, valid=valid, score_before=0.4, score_after=after, error=err,
                        created_at=utcnow(),
                    )
                )  # fmt: skip

        store.transact(add)
        trainer = SimpleNamespace(store=store, run_id="t1")
        assert carried_tries(trainer, start.anchor, 0) == []
        assert [t.modification for t in carried_tries(trainer, start.anchor, 1)] == [ens]
        tried = carried_tries(trainer, start.anchor, 2)  # update 2's own rows are not read
        assert [(t.modification, t.valid) for t in tried] == [('{"edit": "add", "step": "review"}', True), (ens, False)]
        try:
            state = env.with_tried(start, tried)
            assert start.data["search"].tried == []  # the trainer's start state is not changed
            states = [state, copy.deepcopy(state)]
            env.prepare(states, random.Random(0), groups=["u2/g0"] * 2)
            text = env.observe(state)[1]["content"]
            assert "Tried on this workflow:" in text and '{"edit": "add", "step": "review"} -> 25%' in text
            trans = env.step_batch(states, [ens, '{"edit": "ensemble", "k": 5}'], rng=random.Random(0))
        finally:
            env.close()
        assert not trans[0].valid and "already tried" in (trans[0].error or "")
        assert trans[1].valid
    finally:
        server.stop()


class _Chat:
    """A benchmark of a kind the edit language has no catalogue for."""

    def __init__(self, folder: Path):
        from aflowctl.benchmarks.base import Benchmark

        class Chat(Benchmark):
            name = "chatty"
            kind = "chat"
            required_fields = ("q", "a")
            splits = ("validate",)
            package_dir = folder

            def inputs(self, p):
                return (p["q"],)

            def expected(self, p):
                return p["a"]

            def score(self, prediction, p):
                return float(str(prediction).strip() == p["a"])

        self.bench = Chat()


def test_bad_action_format_input_is_one_line_before_any_run(tmp_path, monkeypatch):
    from aflowctl import plugins
    from aflowctl.hookspecs import hookimpl

    (tmp_path / "chatty_validate.jsonl").write_text('{"q": "hi?", "a": "hello"}\n')
    chat = _Chat(tmp_path)

    class Plugin:
        @hookimpl
        def register_benchmarks(self, register):
            register(chat.bench)

    plugins.register_plugin(Plugin(), name="chatty-plugin")
    db = tmp_path / "b.db"
    cases = [
        (["optimize", "--action-format", "bogus", "--optimizer-model", "mutate"], "action_format"),
        (["train", "--action-format", "bogus"], "action_format"),
        (
            [
                "optimize",
                "--action-format",
                "edit",
                "--dataset",
                "chatty",
                "--optimizer-model",
                "mutate",
                "--executor-model",
                "openai/gpt-4o-mini",
            ],
            "no edit catalogue",
        ),
        (
            [
                "optimize",
                "--dataset",
                "chatty",
                "--optimizer-model",
                "mutate",
                "--executor-model",
                "openai/gpt-4o-mini",
            ],
            "no edit catalogue",
        ),  # mutate picks edits
    ]
    for args, needle in cases:
        r = runner.invoke(app, args + ["--db", str(db)])
        assert r.exit_code == 1, (args, r.output)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
    cfg = tmp_path / "t.toml"
    cfg.write_text('[train]\ndatasets = ["chatty"]\naction_format = "edit"\n')
    from trainer_helpers import tiny_policy_dir

    r = runner.invoke(app, ["train", "--config", str(cfg), "--policy-model", str(tiny_policy_dir()), "--db", str(db)])
    assert r.exit_code == 1 and "no edit catalogue" in r.stderr, r.output
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_optimizer_and_trainer_do_not_import_each_other():
    """Both sit above aflowctl.mdp; neither imports the other (no import cycle)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "aflowctl"

    def imported(pkg: str) -> set[str]:
        names: set[str] = set()
        for f in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.add(node.module)
                    names.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
        return names

    assert not [m for m in imported("optimizer") if m.startswith("aflowctl.trainer")]
    assert not [m for m in imported("trainer") if m.startswith("aflowctl.optimizer")]
    assert not [m for m in imported("mdp") if m.startswith(("aflowctl.trainer", "aflowctl.optimizer"))]


@pytest.mark.slow
def test_short_edit_format_training_run_on_arith(tmp_path, monkeypatch):
    """configs/train/arith-edit.toml, cut to one tiny update: the embedded SmolLM2 answers in the edit
    language, valid actions are recorded, a checkpoint is written, prompt + answer stay under 700 tokens."""
    from aflowctl import plugins
    from aflowctl.config import apply_overrides
    from aflowctl.store import open_store, queries
    from aflowctl.trainer import policy as pol
    from aflowctl.trainer.loop import Trainer

    monkeypatch.setenv("AFLOWCTL_LOAD_PLUGINS", "aflowctl-arith")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")
    plugins.reset()
    repo = Path(__file__).resolve().parents[1]
    with OpenAIServer(responder=lambda messages, body: "The answer is 7").start() as server:
        cfg = load_config(repo / "configs" / "train" / "arith-edit.toml")
        cfg = apply_overrides(
            cfg,
            {
                "train.groups_per_epoch": 1,
                "train.episodes_per_group": 4,
                "train.steps_per_episode": 1,
                "train.validation_limit": 2,
                "train.temperature": 0.3,
                "train.max_new_tokens": 24,
                "train.executor.model": "openai/test-exec",
                "train.executor.api_base": server.url,
            },
        )
        res = Trainer(cfg, store=open_store()).run()
    assert res.updates == 1 and (res.last_checkpoint / "model" / "model.safetensors").is_file()
    rows = queries.list_experiences(open_store(), run_id=res.run_id)
    assert len(rows) == 4 and any(r["valid"] for r in rows), [r["action_text"] for r in rows]
    assert all(r["valid"] or r["error"] for r in rows)
    _, tok = pol.load_policy(pol.resolve_policy_path(None))
    for r in rows:
        prompt = len(pol.render_prompt_ids(tok, json.loads(r["prompt"])))
        assert prompt < 600 and prompt + len(tok(r["action_text"])["input_ids"]) < 700
