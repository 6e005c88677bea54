import math

import pytest
from lightswe.agent.early_stop import EarlyStop, EarlyStopConfig, first_stop

HIGH, LOW = math.log(0.995), math.log(0.5)


def test_fires_after_window_consecutive_confident_tokens():
    cfg = EarlyStopConfig(window=3, min_prob=0.99)
    assert first_stop([HIGH, HIGH, LOW, HIGH, HIGH, HIGH, HIGH], cfg) == 6
    assert first_stop([HIGH, HIGH, LOW] * 10, cfg) is None
    assert first_stop([HIGH] * 10, EarlyStopConfig(window=3, enabled=False)) is None


def test_probability_must_be_strictly_above_p():
    assert first_stop([math.log(0.99)] * 5, EarlyStopConfig(window=2, min_prob=0.99)) is None


def test_minimax_defaults_and_streaming_form():
    cfg = EarlyStopConfig()
    assert (cfg.window, cfg.min_prob) == (3000, 0.99)
    stop = EarlyStop(cfg)
    assert not any(stop.update(HIGH) for _ in range(2999)) and stop.update(HIGH)


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"min_prob": 1.0}, {"min_prob": 0.0}])
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        EarlyStopConfig(**kwargs)
