"""The edit action language: every edit applies, round-trips through graph.py, and refuses what does not apply."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aflowctl.mdp import edits, spec
from aflowctl.mdp.edits import Edit, EditError, apply_edit, parse_edit
from aflowctl.mdp.mutate import propose_edit
from aflowctl.mdp.parse import ProposalError
from aflowctl.workflow.loader import WorkflowSource, check_source

SEED_GRAPH = """from aflowctl.workflow.api import operator, create_llm_instance

class Workflow:
    def __init__(self, name, llm_config, dataset):
        self.llm = create_llm_instance(llm_config)
        self.custom = operator.Custom(self.llm)

    async def __call__(self, problem):
        s = await self.custom(input=problem, instruction=prompt_custom.SOLVE)
        return s["response"], self.llm.get_usage_summary()["total_cost"]
"""
SEED_PROMPT = 'SOLVE = "Solve it."\n'
ALL_OPS = ["Custom", "AnswerGenerate", "CustomCodeGenerate", "ScEnsemble", "Programmer", "Test", "Review", "Revise"]


def _compile(sp: spec.Spec) -> WorkflowSource:
    g, p = spec.render(sp, spec.import_lines(SEED_GRAPH))
    src = WorkflowSource(graph=g, prompt=p)
    check_source(src, known_operators=ALL_OPS)
    return src


EVERY_EDIT = [
    ("math", {"edit": "ensemble", "k": 5}, lambda s: s.ensemble == 5, "ScEnsemble"),
    ("math", {"edit": "add", "step": "programmer"}, lambda s: s.programmer, "Programmer"),
    ("code", {"edit": "add", "step": "test"}, lambda s: s.test, "Test"),
    ("qa", {"edit": "add", "step": "review"}, lambda s: s.review, "Review"),
    (
        "math",
        {"edit": "instruction", "step": "answer", "text": "Add the numbers. Reply with the number."},
        lambda s: s.instruction == "Add the numbers. Reply with the number.",
        "Add the numbers",
    ),
    (
        "math",
        {"edit": "answer_op", "op": "AnswerGenerate"},
        lambda s: s.answer_op == "AnswerGenerate",
        "AnswerGenerate",
    ),
]


@pytest.mark.parametrize("kind,obj,check,marker", EVERY_EDIT)
def test_every_edit_applies_and_round_trips_through_graph_py(kind, obj, check, marker):
    parent = spec.read_spec(SEED_GRAPH, SEED_PROMPT, kind)
    e = parse_edit(json.dumps(obj))
    assert e.as_dict() == obj and json.loads(e.canonical()) == obj
    child = apply_edit(parent, e, ALL_OPS)
    assert check(child) and child != parent
    src = _compile(child)
    assert marker in src.graph + src.prompt
    assert spec.read_spec(src.graph, src.prompt, kind) == child  # the spec is read back from graph.py
    assert spec.render(child, spec.import_lines(SEED_GRAPH)) == (src.graph, src.prompt)  # deterministic


@pytest.mark.parametrize("step", ["ensemble", "programmer", "review"])
def test_remove_undoes_each_step(step):
    sp = spec.Spec(kind="math", answer_op="Custom", instruction="x", ensemble=3, programmer=True, review=True)
    out = apply_edit(sp, Edit("remove", step=step))
    assert not (out.ensemble > 1 if step == "ensemble" else getattr(out, step))
    _compile(out)


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty"),
        ("add an ensemble please", "not JSON"),
        ('{"edit": "ensemble", "k": }', "not valid JSON"),
        ("[1, 2]", "not JSON"),
        ('{"k": 3}', 'no "edit"'),
        ('{"edit": "shuffle"}', "unknown edit 'shuffle'"),
        ('{"edit": "ensemble"}', "needs 'k'"),
        ('{"edit": "ensemble", "k": "five"}', "whole number"),
        ('{"edit": "ensemble", "k": true}', "whole number"),
        ('{"edit": "add", "step": "programmer", "k": 2}', "unexpected key 'k'"),
    ],
)
def test_malformed_answers_are_refused_with_a_reason(text, reason):
    with pytest.raises(EditError, match=reason) as ei:
        parse_edit(text)
    assert "\n" not in str(ei.value)


def test_fenced_and_chatty_answers_parse():
    assert parse_edit('```json\n{"edit": "ensemble", "k": 3}\n```').k == 3
    assert parse_edit('Sure! {"edit": "add", "step": "review"} should help.').step == "review"
    assert (
        parse_edit('{"edit": "ensemble", "k": 3}\n{"edit": "ensemble", "k": 5}').k == 3
    )  # the first object is the answer


@pytest.mark.parametrize(
    "kind,obj,reason",
    [
        ("math", {"edit": "ensemble", "k": 1}, "at least 2"),
        ("math", {"edit": "ensemble", "k": 0}, "at least 2"),
        ("math", {"edit": "ensemble", "k": 12}, "at most 9"),
        ("math", {"edit": "remove", "step": "review"}, "has no review step"),
        ("math", {"edit": "remove", "step": "answer"}, "cannot be removed"),
        ("math", {"edit": "remove", "step": "planner"}, "unknown step 'planner'"),
        ("math", {"edit": "add", "step": "test"}, "code tasks only"),
        ("code", {"edit": "add", "step": "programmer"}, "math tasks only"),
        ("math", {"edit": "add", "step": "critic"}, "unknown step 'critic'"),
        ("math", {"edit": "instruction", "step": "review", "text": "x"}, "only the answer step"),
        ("math", {"edit": "instruction", "step": "answer", "text": "  "}, "empty"),
        ("math", {"edit": "instruction", "step": "answer", "text": "..."}, "placeholder"),
        ("math", {"edit": "instruction", "step": "answer", "text": "Solve it."}, "unchanged"),
        ("math", {"edit": "answer_op", "op": "Custom"}, "already uses Custom"),
        ("math", {"edit": "answer_op", "op": "CustomCodeGenerate"}, "not available for math"),
    ],
)
def test_edits_that_do_not_apply_are_refused(kind, obj, reason):
    parent = spec.read_spec(SEED_GRAPH, SEED_PROMPT, kind)
    with pytest.raises(EditError, match=reason):
        apply_edit(parent, parse_edit(json.dumps(obj)), ALL_OPS)


def test_operators_outside_the_run_are_refused():
    parent = spec.read_spec(SEED_GRAPH, SEED_PROMPT, "math")
    with pytest.raises(EditError, match="operator Programmer is not allowed"):
        apply_edit(parent, Edit("add", step="programmer"), ["Custom", "ScEnsemble"])
    assert apply_edit(parent, Edit("ensemble", k=3), ["Custom", "ScEnsemble"]).ensemble == 3


def test_already_present_step_is_refused():
    sp = apply_edit(spec.read_spec(SEED_GRAPH, SEED_PROMPT, "math"), Edit("add", step="review"))
    with pytest.raises(EditError, match="already has a review step"):
        apply_edit(sp, Edit("add", step="review"))
    with pytest.raises(EditError, match="already has k=3"):
        apply_edit(apply_edit(sp, Edit("ensemble", k=3)), Edit("ensemble", k=3))


@pytest.mark.parametrize("kind", ["math", "qa", "code"])
def test_mutate_is_a_seeded_random_policy_over_the_language(kind):
    sp = spec.read_spec(SEED_GRAPH, SEED_PROMPT, kind)
    seen: list[str] = []
    rng = np.random.default_rng(0)
    for _ in range(6):
        e = propose_edit(sp, rng=rng, tried=seen)
        assert parse_edit(e.canonical()) == e  # mutate speaks the language a policy speaks
        new = apply_edit(sp, e)
        _compile(new)
        assert e.canonical() not in seen
        seen.append(e.canonical())
        sp = new
    a = propose_edit(sp, rng=np.random.default_rng(3))
    assert a == propose_edit(sp, rng=np.random.default_rng(3))


def test_mutate_covers_the_old_catalogue_and_stops_when_all_tried():
    sp = spec.read_spec(SEED_GRAPH, SEED_PROMPT, "math")
    cat = edits.catalogue(sp)
    names = {(e.edit, e.k, e.step, e.op) for e in cat}
    assert {
        ("ensemble", 3, None, None),
        ("ensemble", 5, None, None),
        ("add", None, "programmer", None),
        ("add", None, "review", None),
    } <= names
    assert sum(e.edit == "instruction" for e in cat) == len(spec.INSTRUCTIONS["math"]) - (
        sp.instruction in spec.INSTRUCTIONS["math"]
    )
    qa = edits.catalogue(spec.read_spec(SEED_GRAPH, SEED_PROMPT, "qa"))
    assert Edit("answer_op", op="AnswerGenerate") in qa
    with pytest.raises(ProposalError, match="already tried"):
        propose_edit(sp, rng=np.random.default_rng(0), tried=[e.canonical() for e in cat])
    limited = edits.catalogue(sp, ["Custom", "ScEnsemble"])
    assert all(e.edit in ("ensemble", "instruction") for e in limited)


def test_seed_instruction_is_read_from_prompt():
    sp = spec.read_spec(SEED_GRAPH, SEED_PROMPT, "math")
    assert sp.instruction == "Solve it." and sp.answer_op == "Custom" and sp.ensemble == 1
    assert spec.spec_literal(SEED_GRAPH) is None


def test_menu_order_is_fixed_per_observation_but_no_position_is_a_shortcut():
    """The same state renders the same prompt; across states the first menu line varies (a policy
    cannot earn validity by always copying one position)."""
    from aflowctl.mdp.experience import Tried
    from aflowctl.mdp.observe import render_edit_prompt

    sp = spec.read_spec(SEED_GRAPH, SEED_PROMPT, "math")
    menu = edits.available(sp, ALL_OPS)

    def user(score, tried=()):
        msgs = render_edit_prompt(kind="math", spec=sp, score=score, tried=tried, failed_cases=[], edits=menu)
        return msgs[1]["content"]

    first = user(0.4)
    assert first == user(0.4)
    lines = first.splitlines()
    start = lines.index("Edits (pick one):") + 1
    assert sorted(lines[start : start + len(menu)]) == sorted(menu)
    firsts = set()
    for i in range(20):
        tried = [
            Tried(modification=f"edit {j}", score_before=None, score_after=None, valid=False, error="x")
            for j in range(i % 3)
        ]
        ls = user(i / 20, tried).splitlines()
        firsts.add(ls[ls.index("Edits (pick one):") + 1])
    assert len(firsts) >= 3, firsts


def test_menu_leaves_out_what_was_already_tried():
    sp = spec.read_spec(SEED_GRAPH, SEED_PROMPT, "math")
    full = edits.available(sp, ALL_OPS)
    assert full[0].startswith('{"edit": "ensemble", "k": 3}') and '{"edit": "add", "step": "programmer"}' in full
    tried = ['{"edit": "ensemble", "k": 3}', '{"edit":"add","step":"programmer"}', '{"edit": "ensemble", "k": 5}']
    menu = edits.available(sp, ALL_OPS, tried)
    assert menu[0].startswith('{"edit": "ensemble", "k": 2}')  # the example takes an untried k
    assert '{"edit": "add", "step": "programmer"}' not in menu and len(menu) == len(full) - 1
    for line in menu:  # every example in the menu is a valid, untried edit
        e = parse_edit(line.split("  (")[0].replace('"..."', '"Solve it step by step."'))
        apply_edit(sp, e, ALL_OPS)
