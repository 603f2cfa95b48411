"""GiGPO training of the optimizer policy (advantages, loss, checkpoints, loop, env, SFT).

Heavy libraries (torch, transformers) are imported inside functions so that the CLI
starts fast.
"""

from aflowctl.errors import AflowctlError


class TrainingError(AflowctlError):
    """Training cannot go on (out of memory, no experiences, a bad model directory...)."""
