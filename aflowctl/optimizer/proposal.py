"""Proposing a round's children: K modifications of the parent, from the optimizer LLM, the
trained policy or the LLM-free ``mutate`` proposer, each checked (parse, compile, smoke run)
and retried up to ``optimize.max_retries`` times with the reason fed back. Siblings never
repeat each other."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

from loguru import logger

from aflowctl.mdp.core import SearchState, one_line
from aflowctl.mdp.observe import messages_to_text
from aflowctl.mdp.parse import ProposalError, normalise_modification
from aflowctl.optimizer.selection import round_rng


@dataclass
class Child:
    """A proposed child of the round's parent, valid or not, and (once evaluated) its scores."""

    k: int
    modification: Optional[str]
    action_text: str
    prompt_text: str
    graph: Optional[str] = None
    prompt: Optional[str] = None
    workflow_id: Optional[int] = None
    valid: bool = False
    error: Optional[str] = None
    scores: list[float] = field(default_factory=list)


def propose_one(
    opt, round_no: int, k: int, state: SearchState, exclude: list[str], first: Optional[tuple[str, str]] = None
) -> Child:
    """One child of the parent ``state``: retried up to max_retries with the reason fed back.

    Only what the answer got wrong is retried (an invalid action, see
    :mod:`aflowctl.mdp.core`); any other error stops the run. ``exclude`` holds the
    modifications taken by sibling candidates of this round (``mutate`` avoids them)."""
    plan = opt.plan()
    prompt_text = messages_to_text(opt.mdp.observe(state))
    taken = list(exclude)
    feedback: Optional[str] = None
    last = Child(k=k, modification=None, action_text="", prompt_text=prompt_text)
    for attempt in range(opt.oc.max_retries + 1):
        if opt._uses_mutate():
            if attempt == 0 and first is not None:
                action, mod = first
            else:
                try:
                    action, mod = opt.mdp.random_action(
                        state, round_rng(opt.oc.seed, round_no, 1000 + 10 * k + attempt), exclude=taken
                    )
                except ProposalError as exc:  # every catalogue edit was tried: nothing left to propose
                    last.error = one_line(exc)
                    return last
            taken.append(mod)
        else:
            msgs = opt.mdp.observe(state, error_feedback=feedback)
            llm = opt._get_optimizer_llm()
            t0 = time.perf_counter()
            try:
                sample = _run_async(
                    llm.generate(
                        msgs,
                        temperature=opt.oc.optimizer.temperature,
                        seed=opt.oc.seed * 1_000_003 + round_no * 101 + k,
                    )
                )
            finally:
                opt._wait_s += time.perf_counter() - t0
            action = sample.text
        act = opt.mdp.check(state, action, plan)
        src = act.source
        last = Child(
            k=k,
            modification=act.modification,
            action_text=action,
            prompt_text=prompt_text,
            graph=src.graph if src is not None else None,
            prompt=src.prompt if src is not None else None,
            valid=act.valid,
            error=act.error,
        )
        if act.valid:
            return last
        feedback = act.error
        logger.info(f"round {round_no} candidate {k} attempt {attempt + 1}: {feedback}")
        opt.progress("proposal_failed", round=round_no, k=k, attempt=attempt + 1, error=feedback)
    return last


def propose_all(opt, round_no: int, parent: dict, parent_score: float) -> list[Child]:
    """K children, proposed and smoke-checked in parallel; siblings never repeat each other."""
    from aflowctl.workflow.loader import WorkflowSource

    state = SearchState(
        source=WorkflowSource(graph=parent["graph_code"], prompt=parent["prompt_code"]),
        score=parent_score,
        tried=opt._tried(parent["id"]),
        failed_cases=opt._failed_cases(parent["id"]),
    )
    K = opt.oc.candidates
    firsts: list[Optional[tuple[str, str]]] = [None] * K
    if opt._uses_mutate():
        taken: list[str] = []
        for k in range(K):
            try:
                first = opt.mdp.random_action(state, round_rng(opt.oc.seed, round_no, 1000 + 10 * k), exclude=taken)
            except ProposalError:
                break
            firsts[k] = first
            taken.append(first[1])
    siblings = [f[1] for f in firsts if f is not None]

    def one(k: int) -> Child:
        fk = firsts[k]
        mine = fk[1] if fk is not None else None
        return propose_one(opt, round_no, k, state, [x for x in siblings if x != mine], firsts[k])

    if K == 1:
        children = [one(0)]
    else:
        with ThreadPoolExecutor(max_workers=K) as tp:
            children = list(tp.map(one, range(K)))
    seen: set[str] = set()
    for c in children:  # an LLM may propose the same thing twice in one round
        key = normalise_modification(c.modification or "")
        if c.valid and key in seen:
            c.valid, c.error = False, "repeats a sibling candidate's modification in the same round"
        seen.add(key)
    return children


def _run_async(coro):
    import asyncio

    return asyncio.run(coro)
