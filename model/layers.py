"""The layers of a MiniMax decoder: RMSNorm, lightning attention, softmax attention, MoE, the decoder layer.

Module and parameter names are those of the released checkpoints, so state dicts load without renaming.
Every attention layer takes ``positions`` [B, T] (RoPE; restarts per packed sequence), optional
``cu_seqlens`` (packed [1, T] input) and an optional ``HybridCache`` (decode / continued prefill).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from lightswe.kernels.lightning_attn import lightning_attn, lightning_attn_decode
from lightswe.model.cache import HybridCache
from lightswe.model.config import SOFTMAX, MiniMaxConfig
from lightswe.model.fused import (compile_enabled, gated_rms_norm, residual, rms_norm, rms_norm_and_cast, rotate_half,
                                  silu_split)
from lightswe.model.moe import grouped_experts, use_grouped
from torch import nn
from lightswe.errors import UserInputError

# The decoder layer's norms hand their matrix products one bf16 copy on the compiled CUDA path under autocast
# (``DecoderLayer._forward_cast_once``; benchmarks/train.py --cast-once)
CAST_ONCE = True
# The lightning layer's q, k, v written contiguous by its compiled silu pass (``fused.silu_split``) and, on the
# cast-once path, its output gate writing the bf16 copy its output projection reads (the cast autocast would
# make: same values); benchmarks/train.py --fused-lightning
FUSED_LIGHTNING = True
LIGHTNING_NORM_EPS = 1e-6  # the released code builds the lightning output norm with RMSNorm's default eps


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back, then scaled (the Llama / MiniMax convention)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)  # fused on CUDA in training (model/fused.py)


def lightning_slope(num_heads: int, layer_idx: int, num_layers: int) -> torch.Tensor:
    """Per-head decay rate of lightning layer ``layer_idx``: 2^(-8(h+1)/H) * (1 - l/(L-1) + 1e-5), fp32 [H].

    As in the released MiniMax code (vLLM's port); note that transformers' port divides by (L-1+1e-5).
    """
    base = torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)], dtype=torch.float64,
                        device="cpu")  # real values even when the model is built under torch.device("meta")
    factor = 1 + 1e-5 if num_layers <= 1 else 1 - layer_idx / (num_layers - 1) + 1e-5
    return (base * factor).float()


class LightningAttention(nn.Module):
    """Linear attention with a per-head exponential decay (MiniMax "lightning attention").

    qkv = silu(W_qkv x) laid out per head as [q_h | k_h | v_h]; S_t = exp(-s_h) S_{t-1} + k_t^T v_t (fp32);
    o_t = q_t S_t (no 1/sqrt(d), no RoPE); y = W_out(sigmoid(W_gate x) * RMSNorm(o over all heads)).
    """

    def __init__(self, config: MiniMaxConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        inner = self.num_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * inner, bias=False)
        self.output_gate = nn.Linear(config.hidden_size, inner, bias=False)
        self.norm = RMSNorm(inner, LIGHTNING_NORM_EPS)
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=False)
        # Derived from the config, never saved; kept off the module's buffers so meta-device builds stay exact.
        self._slope_cpu = lightning_slope(self.num_heads, layer_idx, config.num_hidden_layers)
        self._slope: dict[torch.device, torch.Tensor] = {}

    def slope(self, device: torch.device) -> torch.Tensor:
        """The per-head decay rates [H] fp32 on ``device`` (copied once per device)."""
        if device not in self._slope:
            self._slope[device] = self._slope_cpu.to(device)
        return self._slope[device]

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                cache: HybridCache | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``dtype``: the residual stream's dtype, which the output norm computes in (default x's; the decoder
        layer passes fp32 when it hands the projections a bf16 copy of its fp32 input)."""
        batch, length, _ = x.shape
        qkv = self.qkv_proj(x).view(batch, length, self.num_heads, 3 * self.head_dim)
        if FUSED_LIGHTNING:  # compiled: q, k, v written contiguous by the silu pass (model/fused.py)
            q, k, v = silu_split(qkv, self.head_dim)
        else:
            q, k, v = F.silu(qkv).split(self.head_dim, dim=-1)
        slope = self.slope(x.device)
        if cache is not None and cache.started and length == 1:
            state = cache.lightning_state(self.layer_idx)
            o = lightning_attn_decode(q[:, 0], k[:, 0], v[:, 0], slope, state).unsqueeze(1)
        else:
            initial = cache.lightning_state(self.layer_idx) if cache is not None and cache.started else None
            o, final = lightning_attn(q, k, v, slope, initial_state=initial, cu_seqlens=cu_seqlens)
            if cache is not None:
                cache.set_lightning_state(self.layer_idx, final)
        # sigmoid(gate) * norm(o); handed to the output projection in x's dtype when x is the bf16 copy of the
        # fp32 residual stream (FUSED_LIGHTNING; the cast autocast makes, done inside the compiled chain)
        out_dtype = x.dtype if FUSED_LIGHTNING and dtype not in (None, x.dtype) else None
        gated = gated_rms_norm(self.output_gate(x), o.reshape(batch, length, -1), self.norm.weight, self.norm.eps,
                               dtype or x.dtype, out_dtype)
        return self.out_proj(gated)


def rotary(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, theta: float) -> torch.Tensor:
    """NeoX (rotate-half) RoPE on the first ``rotary_dim`` channels of x [B, T, H, D]; the rest pass through."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=x.device, dtype=torch.float32) / rotary_dim))
    freqs = positions.float()[..., None] * inv_freq  # [B, T, rotary_dim / 2]
    cos, sin = (f.repeat(1, 1, 2)[:, :, None, :] for f in (freqs.cos(), freqs.sin()))
    return rotate_half(x, cos, sin, rotary_dim)  # one compiled pass in CUDA training (model/fused.py)


class SoftmaxAttention(nn.Module):
    """Causal softmax attention with GQA, partial NeoX RoPE and scale 1/sqrt(head_dim); no biases."""

    def __init__(self, config: MiniMaxConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.rotary_dim, self.theta = config.head_dim, config.rotary_dim, config.rope_theta
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                cache: HybridCache | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``dtype``: unused (the output is the output projection's; same signature as LightningAttention)."""
        batch, length, _ = x.shape
        q = rotary(self.q_proj(x).view(batch, length, self.num_heads, self.head_dim), positions,
                   self.rotary_dim, self.theta).transpose(1, 2)
        k = rotary(self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim), positions,
                   self.rotary_dim, self.theta).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        scale = 1.0 / math.sqrt(self.head_dim)
        if cache is not None and cache.started:  # continue every row after its own cached prefix
            keys, values, mask = cache.append_kv(self.layer_idx, k, v)
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
        elif cu_seqlens is not None:  # packed: attend within each sequence only
            bounds = cu_seqlens.tolist()
            o = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True,
                                                          scale=scale, enable_gqa=True)
                           for s, e in pairwise(bounds)], dim=2)
            if cache is not None:
                cache.store_packed_kv(self.layer_idx, k, v, bounds)
        else:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
            if cache is not None:
                cache.store_packed_kv(self.layer_idx, k, v, None)
        return self.o_proj(o.transpose(1, 2).reshape(batch, length, -1))


class Expert(nn.Module):
    """SwiGLU feed-forward: w2(silu(w1 x) * w3 x)."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, inner, bias=False)
        self.w2 = nn.Linear(inner, hidden, bias=False)
        self.w3 = nn.Linear(hidden, inner, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoE(nn.Module):
    """Top-k softmax router (fp32, weights renormalised to sum 1) over dropless SwiGLU experts.

    Returns (output, load-balancing loss). The loss is Switch-Transformer style: E * sum_e f_e * P_e with f_e the
    fraction of the top-k assignments going to expert e and P_e its mean router probability (1 * k when balanced).
    The experts run as grouped GEMMs on CUDA in bf16 (``model/moe.py``), as a per-expert loop elsewhere.
    """

    def __init__(self, config: MiniMaxConfig) -> None:
        super().__init__()
        self.top_k, self.num_experts = config.num_experts_per_tok, config.num_local_experts
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(config.hidden_size, config.intermediate_size)
                                     for _ in range(self.num_experts))

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., hidden] -> (out [..., hidden], aux scalar fp32). ``out_dtype`` (grouped path only): the
        output's dtype when x is the bf16 copy of an fp32 residual stream (default x's)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate(x).float(), dim=-1)  # [N, E]
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        if use_grouped(x, self.experts[0].w1.weight):  # grouped GEMMs, no host sync (model/moe.py)
            out, counts = grouped_experts(x, chosen, weights, self.experts, out_dtype)
        else:
            if out_dtype not in (None, x.dtype):
                raise UserInputError(f"out_dtype={out_dtype} needs the grouped MoE path (the loop sums in x's dtype)")
            out, counts = self._loop(x, chosen, weights)
        fraction = counts.float() / max(x.shape[0], 1)
        aux = self.num_experts * (fraction * probs.mean(0)).sum()
        return out.view(shape), aux

    def _loop(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference: one matrix product per expert on its rows (one host sync per layer for the counts)."""
        out = torch.zeros_like(x)
        flat = chosen.flatten()
        counts = torch.bincount(flat, minlength=self.num_experts)
        order = flat.argsort(stable=True)  # assignments grouped by expert: one host sync per layer, not per expert
        rows_sorted = order // self.top_k
        weights_sorted = weights.flatten()[order, None].to(x.dtype)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n:
                rows = rows_sorted[start:start + n]
                out.index_add_(0, rows, self.experts[e](x[rows]) * weights_sorted[start:start + n])
            start += n
        return out, counts


class DecoderLayer(nn.Module):
    """Post-norm (DeepNorm-style) block: h = norm(x); x = alpha h + beta attn(h); same again for the MoE.

    With ``postnorm`` false the residual is the un-normalised input instead (x = alpha x + beta attn(norm(x))).
    """

    def __init__(self, config: MiniMaxConfig, layer_idx: int) -> None:
        super().__init__()
        softmax = config.attn_type_list[layer_idx] == SOFTMAX
        self.self_attn = SoftmaxAttention(config, layer_idx) if softmax else LightningAttention(config, layer_idx)
        kind = "full_attention" if softmax else "linear_attention"
        self.attn_alpha = getattr(config, f"layernorm_{kind}_alpha")
        self.attn_beta = getattr(config, f"layernorm_{kind}_beta")
        self.mlp_alpha, self.mlp_beta = config.layernorm_mlp_alpha, config.layernorm_mlp_beta
        self.postnorm = config.postnorm
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.block_sparse_moe = SparseMoE(config)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                cache: HybridCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if (CAST_ONCE and compile_enabled(x) and x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type)
                and use_grouped(x, self.block_sparse_moe.experts[0].w1.weight)):
            return self._forward_cast_once(x, positions, cu_seqlens, cache)
        h = self.input_layernorm(x)
        skip = h if self.postnorm else x
        if compile_enabled(x):
            x = residual(skip, self.self_attn(h, positions, cu_seqlens, cache), self.attn_alpha, self.attn_beta)
        else:  # alpha * skip enters the autograd graph before the attention: the CPU gradients stay bit-exact
            x = self.attn_alpha * skip + self.attn_beta * self.self_attn(h, positions, cu_seqlens, cache)
        h = self.post_attention_layernorm(x)
        moe, aux = self.block_sparse_moe(h)
        return residual(h if self.postnorm else x, moe, self.mlp_alpha, self.mlp_beta), aux

    def _forward_cast_once(self, x: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor | None,
                           cache: HybridCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` for an fp32 residual stream under autocast on the compiled CUDA path: each norm also
        writes the bf16 copy its matrix products read (``rms_norm_and_cast``), so autocast casts neither it
        (once per product: 2 in a lightning layer, 3 in a softmax one, 2 in the MoE) nor its gradients back.
        The forward values are those of ``forward``; the gradients of the bf16 copy are summed in bf16."""
        low = torch.get_autocast_dtype(x.device.type)
        norm = self.input_layernorm
        h, h_low = rms_norm_and_cast(x, norm.weight, norm.eps, low)
        x = residual(h if self.postnorm else x, self.self_attn(h_low, positions, cu_seqlens, cache, dtype=x.dtype),
                     self.attn_alpha, self.attn_beta)
        norm = self.post_attention_layernorm
        h, h_low = rms_norm_and_cast(x, norm.weight, norm.eps, low)
        moe, aux = self.block_sparse_moe(h_low, out_dtype=x.dtype)
        return residual(h if self.postnorm else x, moe, self.mlp_alpha, self.mlp_beta), aux
