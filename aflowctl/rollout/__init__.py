"""Rollouts: the durable task pool (process pool or Ray) and workflow evaluation.

- :mod:`.worker`: functions that run inside worker processes (``evaluate``, ``selftest``).
- :mod:`.pool`: :class:`~aflowctl.rollout.pool.RolloutPool`, the durable task queue.
- :mod:`.ray_backend`: the same tasks on a Ray cluster.
- :mod:`.evaluate`: :func:`~aflowctl.rollout.evaluate.evaluate_workflow`.
- :mod:`.importer`: ``"module:attr"`` import strings.
"""
