"""Triton decode step: one token per sequence, fp32 state updated in place.

The step is bound by reading and writing the state ([B, H, K, V] fp32: 67 MB at B=8, H=64, 128x128), so
the state is split across many programs: one per (sequence*head, BV columns), each streaming a
[K, BV] slice once in and once out and reducing o = q S over K inside the program (no atomics).
Importing this module needs Triton; api.py imports it only on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# (minimum B * H, state slice width BV, warps per program). Measured on an H200 (do_bench, L2 flushed,
# H=64, D=128; RESULTS.md): B=8 BV 32 / 2 warps 22.8 us, B=16 BV 64 / 2 warps 38.9 us, B=32 and 64
# BV 64 / 8 warps 71.1 and 134.3 us; every (BV, warps) at B=8 lies within 22.8-25 us except BV 16 / 8 warps.
DECODE_CONFIGS = ((0, 32, 2), (1024, 64, 2), (2048, 64, 8))


def _decode_config(n_states: int, V: int) -> tuple[int, int]:
    """The (BV, num_warps) of the last DECODE_CONFIGS row whose minimum B*H is <= n_states."""
    bv, warps = next((bv, w) for lo, bv, w in reversed(DECODE_CONFIGS) if n_states >= lo)
    return min(bv, V), warps


@triton.jit
def _decode_kernel(q, k, v, o, slope, state, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BV: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    decay = tl.exp(-tl.load(slope + i_bh % H).to(tl.float32))
    o_k = tl.arange(0, K)
    o_v = i_v * BV + tl.arange(0, BV)
    p_s = state + i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    b_s = tl.load(p_s)
    b_q = tl.load(q + i_bh * K + o_k).to(tl.float32)
    b_k = tl.load(k + i_bh * K + o_k).to(tl.float32)
    b_v = tl.load(v + i_bh * V + o_v).to(tl.float32)
    b_s = b_s * decay + b_k[:, None] * b_v[None, :]
    tl.store(p_s, b_s)
    b_o = tl.sum(b_q[:, None] * b_s, axis=0)
    tl.store(o + i_bh * V + o_v, b_o.to(o.dtype.element_ty))


def lightning_attn_decode_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """q, k [B, H, K], v [B, H, V] contiguous; state [B, H, K, V] fp32 contiguous, updated in place."""
    B, H, K = q.shape
    V = v.shape[-1]
    BV, warps = _decode_config(B * H, V)
    o = torch.empty_like(v)
    _decode_kernel[(triton.cdiv(V, BV), B * H)](q, k, v, o, slope, state, H=H, K=K, V=V, BV=BV, num_warps=warps)
    return o
