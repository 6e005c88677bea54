"""``lightswe.errors.need``: the one validation message shape, as each config's ``__post_init__`` raises it."""

from __future__ import annotations

import re

import pytest
from lightswe.agent.cli import RolloutArgs
from lightswe.agent.train_config import TrainConfig
from lightswe.errors import UserInputError, need
from lightswe.model import MiniMaxConfig

SHAPE = re.compile(r"^(?P<option>\S+) (?P<value>.+): (?P<rule>.+); fix: (?P<fix>.+)$")


def test_need_passes_or_raises_one_line():
    need(True, "--steps", 0, "must be >= 1", "e.g. 10")
    with pytest.raises(UserInputError) as caught:
        need(False, "--steps", 0, "must be >= 1", "e.g. --steps 10")
    assert str(caught.value) == "--steps 0: must be >= 1; fix: e.g. --steps 10"
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError still do


@pytest.mark.parametrize(("make", "option", "value"), [
    (lambda tmp: TrainConfig(out_dir=str(tmp), steps=0), "--steps", "0"),
    (lambda tmp: TrainConfig(out_dir=str(tmp), group_size=1), "--group-size", "1"),
    (lambda tmp: RolloutArgs(out=str(tmp), tasks="demo", temperature=0.0), "--temperature", "0.0"),
    (lambda tmp: RolloutArgs(out=str(tmp), tasks="demo", max_new_tokens=9, max_context=8), "--max-new-tokens", "9"),
    (lambda tmp: MiniMaxConfig(num_attention_heads=6, num_key_value_heads=4), "num_attention_heads", "6"),
    (lambda tmp: MiniMaxConfig(hidden_act="gelu"), "hidden_act", "'gelu'"),
    (lambda tmp: MiniMaxConfig.from_pattern("LXS"), "pattern", "'LXS'"),
    (lambda tmp: MiniMaxConfig.preset("huge"), "preset", "'huge'"),
], ids=["train-steps", "train-group", "rollout-temperature", "rollout-budget", "model-heads", "model-act",
        "model-pattern", "model-preset"])
def test_every_config_speaks_through_need(tmp_path, make, option, value):
    with pytest.raises(UserInputError) as caught:
        make(tmp_path / "out")
    parts = SHAPE.match(str(caught.value))
    assert parts and (parts["option"], parts["value"]) == (option, value), str(caught.value)
    assert "\n" not in str(caught.value)
