"""Selection, convergence, experience, parsing and the mutation proposer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aflowctl.optimizer.convergence import check_convergence
from aflowctl.mdp.experience import Tried, render_experience
from aflowctl.mdp.parse import ProposalError, parse_proposal
from aflowctl.optimizer.selection import (
    Candidate,
    blend_with_policy,
    round_rng,
    select_parent,
    selection_probabilities,
    top_candidates,
)

scores_st = st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(scores=scores_st, alpha=st.floats(0.01, 1), lam=st.floats(0, 1))
def test_probabilities_match_formula(scores, alpha, lam):
    p = selection_probabilities(scores, alpha=alpha, lambda_=lam)
    s = np.array(scores) * 100
    n = len(s)
    soft = np.exp(alpha * (s - s.max()))
    soft /= soft.sum()
    expected = lam / n + (1 - lam) * soft
    assert np.allclose(p, expected / expected.sum(), atol=1e-12)
    assert math.isclose(p.sum(), 1.0, abs_tol=1e-12)
    # a higher score never gets a lower probability
    order = np.argsort(s)
    assert np.all(np.diff(p[order]) >= -1e-12)


def test_probabilities_hand_checked():
    p = selection_probabilities([0.5, 0.4], alpha=0.2, lambda_=0.3)
    e = math.exp(-2.0)
    assert p[0] == pytest.approx(0.15 + 0.7 / (1 + e))
    assert p[1] == pytest.approx(0.15 + 0.7 * e / (1 + e))


def test_top_candidates_keep_initial():
    items = [Candidate(1, 0.1, 1, True)] + [Candidate(i, i / 10, i, False) for i in range(2, 9)]
    top = top_candidates(items, 4)
    assert [c.workflow_id for c in top] == [1, 8, 7, 6]


def test_selection_is_seeded_and_follows_probabilities():
    cands = [Candidate(1, 0.2, 1, True), Candidate(2, 0.5, 2), Candidate(3, 0.45, 3)]
    a = [select_parent(cands, round_rng(7, r))[0].workflow_id for r in range(50)]
    b = [select_parent(cands, round_rng(7, r))[0].workflow_id for r in range(50)]
    assert a == b
    counts = {w: 0 for w in (1, 2, 3)}
    for r in range(4000):
        counts[select_parent(cands, round_rng(1, r))[0].workflow_id] += 1
    p = selection_probabilities([0.5, 0.45, 0.2])
    for wid, prob in zip((2, 3, 1), p):
        assert abs(counts[wid] / 4000 - prob) < 0.03


def test_policy_blend():
    p = np.array([0.5, 0.5])
    assert np.allclose(blend_with_policy(p, [1.0, 0.0], 0.0), p)
    q = blend_with_policy(p, [1.0, 0.0], 0.5)
    assert q[0] > q[1] and math.isclose(q.sum(), 1.0)


def test_convergence_triggers_after_flat_rounds():
    means = [0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    stds = [0.0] * len(means)
    ok, start, end = check_convergence(means, stds, top_k=3, z=0, consecutive=3)
    # top-3 means: .5 .55 .6 .667 .7 .7 .7 .7 -> flat from index 5 on
    assert ok and (start, end) == (5, 7)
    assert not check_convergence(means[:7], stds[:7], top_k=3, z=0, consecutive=3)[0]


def test_convergence_with_noise_and_z():
    means = [0.5, 0.52, 0.53, 0.535]
    stds = [0.05] * 4
    assert check_convergence(means, stds, top_k=3, z=1.0, consecutive=2)[0]
    assert not check_convergence(means, stds, top_k=3, z=0.0, consecutive=2)[0]


def test_experience_labels_success_and_failure():
    tried = [
        Tried("add ensemble", 0.5, 0.6, True),
        Tried("remove step", 0.5, 0.4, True),
        Tried("broken code", 0.5, None, False, "SyntaxError"),
    ]
    text = render_experience(tried, 0.5)
    succ, fail = text.split("Failed")
    assert "Successful" in succ and "add ensemble" in succ and "remove step" not in succ
    assert "remove step" in fail and "broken code" in fail and "SyntaxError" in fail
    assert "prohibit" not in text.lower()


GOOD = """<modification>Use an ensemble</modification>
<graph>
```python
class Workflow:
    async def __call__(self, problem):
        return problem, 0.0
```
</graph>
<prompt>
X = "y"
</prompt>"""


def test_parse_good_and_fenced():
    p = parse_proposal(GOOD)
    assert p.modification == "Use an ensemble"
    assert p.graph.startswith("class Workflow") and "```" not in p.graph
    assert p.prompt.strip() == 'X = "y"'


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty"),
        ("<modification>x</modification><graph>class Workflow: pass</graph>", "no <prompt>"),
        ("<modification>x</modification><graph>class Workflow: pass", "unclosed <graph>"),
        ("<modification> </modification><graph>class Workflow: pass</graph><prompt></prompt>", "empty"),
        ("<modification>x</modification><graph>def f(): pass</graph><prompt></prompt>", "class Workflow"),
        (GOOD + "<graph>class Workflow: pass</graph>", "2 <graph>"),
    ],
)
def test_parse_strict_errors(text, match):
    with pytest.raises(ProposalError, match=match):
        parse_proposal(text)
