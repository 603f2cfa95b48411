"""Registers the built-in benchmarks through the same hook plugins use."""

from __future__ import annotations

from aflowctl.hookspecs import hookimpl


@hookimpl
def register_benchmarks(register):
    from aflowctl.benchmarks.drop import DROP
    from aflowctl.benchmarks.gsm8k import GSM8K
    from aflowctl.benchmarks.hotpotqa import HotpotQA
    from aflowctl.benchmarks.humaneval import HumanEval
    from aflowctl.benchmarks.math import MATH
    from aflowctl.benchmarks.mbpp import MBPP

    for cls in (GSM8K, MATH, HumanEval, MBPP, HotpotQA, DROP):
        register(cls())
