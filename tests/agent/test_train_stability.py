"""What keeps the embedded default run (``python -m lightswe train``) from losing the tool-call format once most
samples succeed: checked on the pieces, in seconds, instead of a 10-minute run (that one is
``test_train_loop.py::test_the_embedded_default_run_learns``, slow)."""

from __future__ import annotations

import pytest
from lightswe.agent.advantages import group_advantages
from lightswe.agent.train_config import TrainConfig


@pytest.mark.parametrize("successes", [1, 4, 7])
def test_the_default_advantages_give_no_sample_more_weight_than_its_reward_gap(successes):
    """A group of 8 with ``successes`` right answers: mean-centred (Dr. GRPO) advantages, never divided by the
    group's std. Divided, the one failure of a 7-of-8 group got -2.65: its tokens after the wrong operator (the
    call's tail and the whole submit turn, the successes' text in a context holding the wrong operator) do not
    cancel against the successes, and that weight pushed the tool-call format itself down (the collapse of the
    default run at 32c49e2; replayed offline, its step-3 update sent 41% of first turns to format errors)."""
    rewards = [1.0] * successes + [0.0] * (8 - successes)
    adv = group_advantages(["g"] * 8, rewards, None, TrainConfig().advantages)
    mean = successes / 8
    assert adv.values == pytest.approx([r - mean for r in rewards])
    assert max(abs(v) for v in adv.values) <= 1.0
    assert sum(adv.values) == pytest.approx(0.0, abs=1e-12)  # shared tokens in shared contexts still cancel


def test_equal_reward_groups_stay_in_the_batch_with_no_gradient():
    """The other guard of the default run: a solved group keeps its tokens in the normaliser (advantage 0)."""
    adv = group_advantages(["a"] * 4 + ["b"] * 4, [1.0] * 4 + [1.0, 0.0, 0.0, 0.0], None, TrainConfig().advantages)
    assert adv.keep == [True] * 8 and adv.values[:4] == [0.0] * 4 and adv.groups_filtered == 1
