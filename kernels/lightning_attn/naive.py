"""Plain PyTorch references for MiniMax lightning attention (the ground truth every kernel is tested against).

Math (per head h, decay lambda_h = exp(-slope_h), no 1/sqrt(d) scale, no RoPE):
    S_t = lambda_h * S_{t-1} + k_t^T v_t          (S: [D, D], fp32)
    o_t = q_t S_t
Shapes: q, k, v [B, T, H, D]; slope [H] (fp32, positive); state [B, H, D, D] fp32.
"""

from __future__ import annotations

import torch


def lightning_attn_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token recurrence in fp32. Returns (o [B, T, H, D] in q's dtype, final state [B, H, D, D] fp32)."""
    batch, length, heads, dim = q.shape
    decay = torch.exp(-slope.float()).view(1, heads, 1, 1)
    state = (torch.zeros(batch, heads, dim, v.shape[-1], device=q.device, dtype=torch.float32)
             if initial_state is None else initial_state.float().clone())
    qf, kf, vf = q.float(), k.float(), v.float()
    out = torch.empty(batch, length, heads, v.shape[-1], device=q.device, dtype=torch.float32)
    for t in range(length):
        state = decay * state + kf[:, t, :, :, None] * vf[:, t, :, None, :]
        out[:, t] = torch.einsum("bhd,bhde->bhe", qf[:, t], state)
    return out.to(q.dtype), state


def lightning_attn_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    block_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocked form (MiniMax's prefill): intra-block with a decay mask, inter-block through the state.

    Within a block of length B, position c (0-based):
        o_c = sum_{j<=c} lambda^(c-j) (q_c.k_j) v_j + lambda^(c+1) q_c S_prev
        S_new = lambda^B S_prev + sum_j lambda^(B-1-j) k_j^T v_j
    Differentiable (used as the CPU training path). Any T; the last block may be short.
    """
    batch, length, heads, dim = q.shape
    slope = slope.float().view(1, heads, 1)  # [1, H, 1]
    state = (torch.zeros(batch, heads, dim, v.shape[-1], device=q.device, dtype=torch.float32)
             if initial_state is None else initial_state.float())
    qf, kf, vf = (x.float().transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    outs = []
    for start in range(0, length, block_size):
        qb, kb, vb = (x[:, :, start:start + block_size] for x in (qf, kf, vf))
        size = qb.shape[2]
        pos = torch.arange(size, device=q.device, dtype=torch.float32)
        diff = pos[:, None] - pos[None, :]  # c - j
        mask = torch.exp(-slope[..., None] * diff.clamp(min=0)) * (diff >= 0)  # [1, H, B, B]
        intra = ((qb @ kb.transpose(-1, -2)) * mask) @ vb
        q_decay = torch.exp(-slope * (pos + 1)).unsqueeze(-1)  # lambda^(c+1): [1, H, B, 1]
        inter = (qb * q_decay) @ state
        outs.append(intra + inter)
        k_decay = torch.exp(-slope * (size - 1 - pos)).unsqueeze(-1)  # lambda^(B-1-j)
        state = torch.exp(-slope * size).unsqueeze(-1) * state + (kb * k_decay).transpose(-1, -2) @ vb
    out = torch.cat(outs, dim=2) if outs else vf.new_zeros(batch, heads, 0, v.shape[-1])  # T = 0: no blocks
    return out.transpose(1, 2).to(q.dtype), state


def lightning_attn_decode_naive(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """One decode step. q, k, v [B, H, D]; state [B, H, D, D] fp32, updated in place. Returns o [B, H, D]."""
    decay = torch.exp(-slope.float()).view(1, -1, 1, 1)
    state.mul_(decay).add_(k.float()[..., :, None] * v.float()[..., None, :])
    return torch.einsum("bhd,bhde->bhe", q.float(), state).to(q.dtype)
