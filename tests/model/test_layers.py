from __future__ import annotations

import math

import pytest
import torch
from lightswe.kernels.lightning_attn.naive import lightning_attn_recurrent
from lightswe.model.layers import LightningAttention, SparseMoE, lightning_slope, rotary


def test_slope_formula():
    slope = lightning_slope(64, 10, 80)
    assert slope.dtype == torch.float32 and slope.shape == (64,)
    expected = [2 ** (-8 * (h + 1) / 64) * (1 - 10 / 79 + 1e-5) for h in range(64)]
    torch.testing.assert_close(slope, torch.tensor(expected), rtol=1e-6, atol=0)
    assert lightning_slope(4, 3, 4)[0].item() == pytest.approx(2 ** -2 * 1e-5)  # last layer: almost no decay


@pytest.mark.parametrize("length", [1, 63, 100], ids=lambda n: f"T{n}")
def test_lightning_layer_chunked_equals_recurrent(tiny_model, length):
    """The layer's chunked path (block 16, odd lengths) equals the token-by-token recurrence on its q, k, v."""
    layer: LightningAttention = tiny_model.model.layers[1].self_attn
    torch.manual_seed(length)
    x = torch.randn(2, length, tiny_model.config.hidden_size)
    out = layer(x, torch.arange(length).expand(2, length))
    qkv = torch.nn.functional.silu(layer.qkv_proj(x)).view(2, length, layer.num_heads, 3 * layer.head_dim)
    q, k, v = qkv.split(layer.head_dim, dim=-1)
    o, _ = lightning_attn_recurrent(q, k, v, layer.slope(x.device))
    expected = layer.out_proj(torch.sigmoid(layer.output_gate(x)) * layer.norm(o.reshape(2, length, -1)))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [1, 17, 50], ids=lambda n: f"prefix{n}")
def test_lightning_layer_with_initial_state(tiny_model, split):
    """Prefix through an empty cache, then the rest through the cache (initial state): equals one pass."""
    layer: LightningAttention = tiny_model.model.layers[0].self_attn
    x = torch.randn(3, 67, tiny_model.config.hidden_size)
    positions = torch.arange(67).expand(3, 67)
    full = layer(x, positions)
    cache = tiny_model.new_cache(3)
    first = layer(x[:, :split], positions[:, :split], cache=cache)
    cache.advance(split)
    rest = layer(x[:, split:], positions[:, split:], cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-5, atol=1e-5)


def test_partial_neox_rope():
    """RoPE rotates pairs (i, i + r/2) of the first r channels by pos * theta^(-2i/r); the rest pass through."""
    x = torch.randn(1, 5, 2, 16)
    positions = torch.arange(5)[None] + 3
    out = rotary(x, positions, rotary_dim=8, theta=10_000.0)
    torch.testing.assert_close(out[..., 8:], x[..., 8:])
    for i in range(4):
        angle = positions[0, :, None].float() * 10_000.0 ** (-2 * i / 8)
        z = torch.complex(x[0, :, :, i], x[0, :, :, i + 4]) * torch.polar(torch.ones_like(angle), angle)
        torch.testing.assert_close(out[0, :, :, i], z.real, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[0, :, :, i + 4], z.imag, rtol=1e-5, atol=1e-6)
    norms = out[..., :8].norm(dim=-1)
    torch.testing.assert_close(norms, x[..., :8].norm(dim=-1), rtol=1e-5, atol=1e-6)


def test_moe_is_dropless_top_k_with_renormalised_weights(tiny_config):
    torch.manual_seed(0)
    moe = SparseMoE(tiny_config)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(50, tiny_config.hidden_size)
    out, aux = moe(x)
    probs = torch.softmax(moe.gate(x), dim=-1)
    top, idx = probs.topk(tiny_config.num_experts_per_tok, dim=-1)
    weights = top / top.sum(-1, keepdim=True)
    expected = torch.stack([sum(weights[n, j] * moe.experts[int(idx[n, j])](x[n]) for j in range(idx.shape[1]))
                            for n in range(x.shape[0])])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    fraction = torch.bincount(idx.flatten(), minlength=tiny_config.num_local_experts).float() / x.shape[0]
    assert aux.item() == pytest.approx(tiny_config.num_local_experts * (fraction * probs.mean(0)).sum().item(), 1e-5)
    assert aux.requires_grad  # flows into the router


def test_moe_aux_loss_is_k_when_balanced(tiny_config):
    moe = SparseMoE(tiny_config)
    torch.nn.init.zeros_(moe.gate.weight)  # uniform router: P_e = 1/E; ties pick experts 0..k-1 only
    _, aux = moe(torch.randn(8, tiny_config.hidden_size))
    e, k = tiny_config.num_local_experts, tiny_config.num_experts_per_tok
    assert aux.item() == pytest.approx(e * k * (1 / e), rel=1e-6) and math.isfinite(aux.item())
