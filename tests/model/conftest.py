"""Fixtures for the model tests: the tiny preset with every parameter random (norms included)."""

from __future__ import annotations

import pytest
import torch
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM


def random_model(config: MiniMaxConfig, seed: int = 0) -> MiniMaxForCausalLM:
    """A model whose norms are random too, so a missing or misplaced norm weight shows up in comparisons."""
    torch.manual_seed(seed)
    model = MiniMaxForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def tiny_config() -> MiniMaxConfig:
    return MiniMaxConfig.preset("tiny")


@pytest.fixture
def tiny_model(tiny_config: MiniMaxConfig) -> MiniMaxForCausalLM:
    return random_model(tiny_config)
