"""Softmax attention for one new token per sequence over a preallocated KV cache (split-K "flash decoding").

    o[s, h] = softmax(scale * q[s, h] K[s, g(h), :L_s]^T) V[s, g(h), :L_s]     (GQA: g(h) = h // (H / KVH))

Only each row's first ``lengths[s]`` cache slots are read, so the cost follows the real context and not the
cache's capacity, and the launch has a fixed grid: it can be captured in a CUDA graph once and replayed at every
context length. Math as in Dao et al., "Flash-Decoding for long-context inference" (2023): each program
reduces one slice of the keys to (max, sum, weighted values) in fp32; a few tensor ops merge the slices.
On CPU (or without Triton) ``decode_attention`` runs the same math with ``scaled_dot_product_attention`` under
a length mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightswe.errors import UserInputError

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU machines: the reference below runs instead
    triton = None

SPLIT = 512  # keys per program
BLOCK_N = 64  # keys per inner step


def decode_attention_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """q [S, H, D]; keys, values [S, KVH, L, D]; lengths [S] (>= 1). Returns o [S, H, D] in q's dtype."""
    mask = torch.arange(keys.shape[2], device=q.device)[None, :] < lengths[:, None].to(q.device)  # [S, L]
    o = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask[:, None, None], scale=scale,
                                       enable_gqa=True)
    return o[:, :, 0]


if triton is not None:

    @triton.jit
    def _split_kernel(q, k, v, lengths, m_out, l_out, acc_out, scale, stride_qs, stride_qh, stride_ks,
                      stride_kh, stride_kn, stride_vs, stride_vh, stride_vn, NSPLIT, H: tl.constexpr,
                      G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, SPLIT: tl.constexpr,
                      BLOCK_N: tl.constexpr):
        s, kvh, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        length = tl.load(lengths + s)
        start = sp * SPLIT
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, D)
        heads = kvh * G + offs_g
        m = tl.full([GP], float("-inf"), tl.float32)
        l_sum = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        if start < length:
            b_q = tl.load(q + s * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
                          mask=offs_g[:, None] < G, other=0.0)
            end = tl.minimum(start + SPLIT, length)
            for n0 in range(start, end, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                valid = offs_n < end
                b_k = tl.load(k + s.to(tl.int64) * stride_ks + kvh * stride_kh + offs_n[:, None] * stride_kn
                              + offs_d[None, :], mask=valid[:, None], other=0.0)
                b_v = tl.load(v + s.to(tl.int64) * stride_vs + kvh * stride_vh + offs_n[:, None] * stride_vn
                              + offs_d[None, :], mask=valid[:, None], other=0.0)
                scores = (tl.dot(b_q, tl.trans(b_k)) * scale).to(tl.float32)  # fp32 also if scale came as fp64
                scores = tl.where(valid[None, :], scores, float("-inf"))
                m_new = tl.maximum(m, tl.max(scores, 1))
                p = tl.exp(scores - m_new[:, None])
                alpha = tl.exp(m - m_new)
                l_sum = l_sum * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(b_v.dtype), b_v)
                m = m_new
        out = (s * H + heads) * NSPLIT + sp
        keep = offs_g < G
        tl.store(m_out + out, m, mask=keep)
        tl.store(l_out + out, l_sum, mask=keep)
        tl.store(acc_out + out[:, None] * D + offs_d[None, :], acc, mask=keep[:, None])


def _triton_usable(q: torch.Tensor, keys: torch.Tensor) -> bool:
    d = q.shape[-1]
    return (triton is not None and q.is_cuda and d >= 16 and d & (d - 1) == 0 and q.dtype == keys.dtype
            and q.dtype in (torch.bfloat16, torch.float16))


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """Attention of one query per row over that row's cached keys and values.

    Args:
        q: [S, H, D] (bf16/fp16 for the Triton kernel; any float dtype on the reference path).
        keys, values: [S, KVH, L, D], last dim contiguous, KVH dividing H; L is the cache's capacity.
        lengths: [S] int, 1 <= lengths <= L: row s attends to its slots [0, lengths[s]).
        scale: score scale, default 1/sqrt(D).
    Returns:
        o [S, H, D] in q's dtype. No host synchronisation; CUDA-graph capturable on the Triton path.
    Raises:
        UserInputError (a ValueError) on mismatched shapes.
    """
    rows, heads, dim = q.shape
    if keys.dim() != 4 or keys.shape != values.shape or keys.shape[0] != rows or keys.shape[3] != dim \
            or heads % keys.shape[1]:
        raise UserInputError(f"expected q [S, H, D] and keys = values [S, KVH, L, D] with KVH dividing H; got "
                         f"q {tuple(q.shape)}, keys {tuple(keys.shape)}, values {tuple(values.shape)}")
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    if not _triton_usable(q, keys) or keys.stride(3) != 1 or values.stride(3) != 1:
        return decode_attention_reference(q, keys, values, lengths, scale)
    kv_heads, capacity = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    nsplit = triton.cdiv(capacity, SPLIT)
    q = q.contiguous()
    m = torch.empty(rows, heads, nsplit, device=q.device, dtype=torch.float32)
    l_sum = torch.empty_like(m)
    acc = torch.empty(rows, heads, nsplit, dim, device=q.device, dtype=torch.float32)
    _split_kernel[(rows, kv_heads, nsplit)](
        q, keys, values, lengths, m, l_sum, acc, scale, q.stride(0), q.stride(1), keys.stride(0), keys.stride(1),
        keys.stride(2), values.stride(0), values.stride(1), values.stride(2), nsplit, H=heads, G=group,
        GP=max(16, triton.next_power_of_2(group)), D=dim, SPLIT=SPLIT, BLOCK_N=BLOCK_N, num_warps=4)
    top = m.amax(-1, keepdim=True)
    weight = torch.exp(m - top)  # empty slices: exp(-inf) = 0
    o = (weight[..., None] * acc).sum(-2) / (weight * l_sum).sum(-1, keepdim=True)
    return o.to(q.dtype)
