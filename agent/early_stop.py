"""Early stop of a generation that has collapsed into near-certain repetition.

MiniMax-M1 (section 3.1) stops a rollout once 3,000 consecutive tokens each had probability above 0.99:
such runs are almost always stuck in a loop, and their huge, confident tails destabilise training.

Example::

    stop = EarlyStop(EarlyStopConfig(window=3, min_prob=0.9))
    [stop.update(lp) for lp in (-0.01, -0.01, -0.01)]  -> [False, False, True]
    first_stop([-0.01] * 5, EarlyStopConfig(window=3, min_prob=0.9))  -> 3  (keep tokens[:3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(kw_only=True, slots=True)
class EarlyStopConfig:
    window: int = 3000  # a turn stops after this many consecutive tokens, each sampled with probability > min_prob
    min_prob: float = 0.99  # the probability each of those tokens exceeds, in (0, 1)
    enabled: bool = True  # stop a turn that repeats itself with near certainty (MiniMax-M1's early stop)

    def __post_init__(self) -> None:
        from lightswe.errors import UserInputError

        if self.window < 1:
            raise UserInputError(f"early stop window must be >= 1 token, got {self.window} (train: "
                                 f"--agent.early-stop.window; rollout: N of --early-stop N,p); fix: e.g. 3000")
        if not 0.0 < self.min_prob < 1.0:
            raise UserInputError(f"early stop min_prob must be in (0, 1), got {self.min_prob} (train: "
                                 f"--agent.early-stop.min-prob; rollout: p of --early-stop N,p); fix: e.g. 0.99")


class EarlyStop:
    """Streaming form, for backends that can stop mid-generation; one instance per generation."""

    def __init__(self, config: EarlyStopConfig) -> None:
        self.config = config
        self._threshold = math.log(config.min_prob)
        self.run = 0

    def update(self, logprob: float) -> bool:
        """Feed the next token's log-probability; True once the window is full (stop after this token)."""
        self.run = self.run + 1 if logprob > self._threshold else 0
        return self.config.enabled and self.run >= self.config.window


def first_stop(logprobs: Sequence[float], config: EarlyStopConfig) -> int | None:
    """Number of tokens to keep if the rule fires within ``logprobs``, else None (post-hoc form)."""
    if not config.enabled:
        return None
    stop = EarlyStop(config)
    for i, logprob in enumerate(logprobs):
        if stop.update(logprob):
            return i + 1
    return None
