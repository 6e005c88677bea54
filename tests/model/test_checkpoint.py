from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM
from safetensors import safe_open

from .conftest import random_model


def test_round_trip_is_exact_and_sharded(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path, max_shard_bytes=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((tmp_path / s).exists() for s in shards)
    assert "model.layers.0.block_sparse_moe.experts.3.w2.weight" in index["weight_map"]
    assert "model.layers.3.self_attn.q_proj.weight" in index["weight_map"]
    loaded = MiniMaxForCausalLM.from_pretrained(tmp_path)
    assert loaded.config == tiny_model.config
    original = tiny_model.state_dict()
    assert original.keys() == loaded.state_dict().keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    ids = torch.randint(0, 263, (1, 20))
    assert torch.equal(loaded(ids).logits, tiny_model(ids).logits)


def test_single_file_and_dtype(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "model.safetensors.index.json").exists()
    loaded = MiniMaxForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_mismatched_config_is_reported(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    config = dataclasses.replace(tiny_model.config, hidden_size=32)
    config.save(tmp_path / "config.json")
    with pytest.raises(ValueError, match="config"):
        MiniMaxForCausalLM.from_pretrained(tmp_path)


# ------------------------------------------------------------------ Hugging Face transformers' MiniMax
transformers = pytest.importorskip("transformers")


def _hf_config() -> MiniMaxConfig:
    # transformers 5.x's MiniMax rotates the whole head (it ignores a partial rotary factor), so compare with
    # rotary_dim == head_dim; partial RoPE is tested against its formula in test_layers.py.
    return dataclasses.replace(MiniMaxConfig.preset("tiny"), rotary_dim=16)


def _hf_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        return transformers.MiniMaxForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_logits_match_transformers_reading_our_checkpoint(tmp_path):
    ours = random_model(_hf_config(), seed=1)
    ours.save_pretrained(tmp_path)
    hf = _hf_load(tmp_path)
    ids = torch.randint(0, 263, (2, 40))  # crosses lightning blocks of 16
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_our_model_reads_a_transformers_checkpoint(tmp_path):
    torch.manual_seed(2)
    config = transformers.MiniMaxConfig(
        vocab_size=272, hidden_size=64, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, block_size=16,
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
        full_attn_alpha_factor=1.7, linear_attn_alpha_factor=1.3, mlp_alpha_factor=1.5, mlp_beta_factor=0.9,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
    hf = transformers.MiniMaxForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # written with the released names
        assert "model.layers.0.block_sparse_moe.experts.1.w3.weight" in f.keys()  # noqa: SIM118
    ours = MiniMaxForCausalLM.from_pretrained(tmp_path)
    assert ours.config.layer_pattern == "LSLS" and ours.config.layernorm_mlp_beta == 0.9
    ids = torch.randint(0, 272, (2, 37))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, rtol=1e-5, atol=1e-5)
