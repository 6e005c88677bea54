"""Public entry points; dispatch to Triton on CUDA, the PyTorch reference elsewhere.

The kernels issue replaces the CUDA branch with Triton kernels; the signatures here are the contract the
model relies on.
"""

from __future__ import annotations

import torch

from lightswe.kernels.lightning_attn.naive import lightning_attn_chunked, lightning_attn_decode_naive


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        raise ValueError(f"expected q, k [B, T, H, D] and v [B, T, H, Dv] with equal B, T, H; "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if slope.shape != (q.shape[2],):
        raise ValueError(f"expected slope of shape [H]={q.shape[2]}, got {tuple(slope.shape)}")


def lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal lightning attention over whole sequences.

    Args:
        q, k, v: [B, T, H, D] (bf16, fp16 or fp32). With ``cu_seqlens``, B must be 1 and the sequences are
            packed along T.
        slope: [H] fp32, decay per step is exp(-slope).
        initial_state: [N, H, D, Dv] fp32 or None (N = B, or the number of packed sequences).
        cu_seqlens: [N + 1] int32/int64 cumulative sequence lengths of packed sequences, or None.
    Returns:
        o [B, T, H, Dv] in q's dtype and the final state [N, H, D, Dv] fp32.
    """
    _check(q, k, v, slope)
    if cu_seqlens is None:
        return lightning_attn_chunked(q, k, v, slope, initial_state)
    if q.shape[0] != 1:
        raise ValueError(f"packed input (cu_seqlens) needs batch size 1, got {q.shape[0]}")
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        init = None if initial_state is None else initial_state[i : i + 1]
        o, s = lightning_attn_chunked(q[:, start:end], k[:, start:end], v[:, start:end], slope, init)
        outs.append(o)
        states.append(s)
    return torch.cat(outs, dim=1), torch.cat(states, dim=0)


def lightning_attn_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """One decoding step for every sequence: q, k, v [B, H, D]; state [B, H, D, Dv] fp32 updated in place.

    Returns o [B, H, Dv] in q's dtype.
    """
    return lightning_attn_decode_naive(q, k, v, slope, state)
