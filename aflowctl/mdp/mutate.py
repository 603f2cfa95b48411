"""The LLM-free ``mutate`` proposer: a seeded random policy over the edit language.

It picks, uniformly with the run's seeded generator, one edit of
:func:`aflowctl.mdp.edits.catalogue` (ensembles of 3 or 5, add or remove a
Programmer/Test/Review step, the QA answer operator, an instruction from a small
library) that was not tried on this parent yet. Its answer goes through the same
parsing and validity checks as any policy's (:class:`aflowctl.mdp.core.SearchMDP`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aflowctl.mdp.edits import Edit, catalogue
from aflowctl.mdp.parse import ProposalError, normalise_modification
from aflowctl.mdp.spec import Spec


def propose_edit(
    spec: Spec, *, rng: np.random.Generator, tried: Sequence[str] = (), allowed_ops: Sequence[str] | None = None
) -> Edit:
    """One edit of ``spec`` whose canonical text is not among ``tried`` (modification texts)."""
    keys = {normalise_modification(t) for t in tried}
    edits = [e for e in catalogue(spec, allowed_ops) if normalise_modification(e.canonical()) not in keys]
    if not edits:
        raise ProposalError(
            "every edit in the mutate catalogue was already tried on this workflow", "select another parent"
        )
    return edits[int(rng.integers(len(edits)))]
