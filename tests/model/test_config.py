from __future__ import annotations

import pytest
import torch
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM


def test_json_round_trip(tmp_path):
    config = MiniMaxConfig.preset("small")
    config.save(tmp_path / "config.json")
    assert MiniMaxConfig.load(tmp_path) == config


def test_released_field_names_are_written(tmp_path):
    data = MiniMaxConfig.preset("minimax-text-01").to_dict()
    for name in ("attn_type_list", "rotary_dim", "layernorm_full_attention_alpha", "layernorm_linear_attention_beta",
                 "layernorm_mlp_alpha", "num_local_experts", "num_experts_per_tok", "postnorm", "head_dim"):
        assert name in data
    assert data["attn_type_list"] == ([0] * 7 + [1]) * 10
    assert data["layernorm_mlp_alpha"] == pytest.approx(3.5565588, abs=1e-7)


def test_reads_transformers_field_names():
    ours = MiniMaxConfig.preset("tiny")
    hf_style = {k: v for k, v in ours.to_dict().items()
                if k not in ("attn_type_list", "rotary_dim", "rope_theta") and not k.startswith("layernorm_")}
    assert MiniMaxConfig.from_dict(hf_style) == ours


def test_pattern_and_errors():
    assert MiniMaxConfig.preset("minimax-text-01").layer_pattern == "LLLLLLLS" * 10
    with pytest.raises(ValueError, match="attn_type_list"):
        MiniMaxConfig(num_hidden_layers=3, attn_type_list=[0, 1])
    with pytest.raises(ValueError, match="unknown preset"):
        MiniMaxConfig.preset("huge")
    with pytest.raises(ValueError, match="pattern"):
        MiniMaxConfig.from_pattern("LLX")


def test_full_size_counts_on_meta_device():
    """MiniMax-Text-01: 456B parameters, 45.9B active per token (experts top-2 of 32; embeddings excluded)."""
    with torch.device("meta"):
        model = MiniMaxForCausalLM(MiniMaxConfig.preset("minimax-text-01"))
    assert all(p.is_meta for p in model.parameters())
    total = model.num_parameters()
    active = model.num_parameters(active=True, embeddings=False)
    assert round(total / 1e9) == 456, total
    assert round(active / 1e9, 1) == 45.9, active
    assert total == 456_089_655_296 and active == 45_944_920_064


def test_small_preset_is_about_100m():
    with torch.device("meta"):
        model = MiniMaxForCausalLM(MiniMaxConfig.preset("small"))
    assert 90e6 < model.num_parameters() < 110e6
