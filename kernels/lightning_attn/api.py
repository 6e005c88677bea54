"""Public entry points: input checks, then Triton on CUDA or the PyTorch reference elsewhere.

Backend choice (``LIGHTSWE_LIGHTNING_BACKEND``): ``auto`` (default) runs the Triton kernels when the
tensors are on a CUDA device, Triton imports and the head dims are powers of two in [16, 256], and the
reference in naive.py otherwise (CPU machines, CI); ``triton`` insists on the kernels (an error says why
they cannot run); ``reference`` always runs the reference. Rollout and training go through these same two
functions, so sampler and learner see the same numerics. On Hopper the Triton forward is chunk.py's Gluon kernel
(gluon_fwd.py, the same result bits); ``LIGHTSWE_LIGHTNING_FWD=triton`` (default ``auto``) keeps the plain one.
"""

from __future__ import annotations

import functools
import itertools
import os

import torch
from lightswe.kernels.lightning_attn.naive import lightning_attn_chunked, lightning_attn_decode_naive
from lightswe.errors import UserInputError

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_BACKENDS = ("auto", "triton", "reference")


@functools.cache
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return f"Triton is not importable ({err}); install it with `pip install triton` on a CUDA machine"
    return None


def _triton_unusable(q: torch.Tensor, head_dims: tuple[int, ...]) -> str | None:
    """None when the Triton kernels can run on these tensors, else the reason."""
    if not q.is_cuda:
        return f"tensors are on {q.device}, the Triton kernels need a CUDA device"
    if any(d < 16 or d > 256 or d & (d - 1) for d in head_dims):
        return f"head dims {head_dims} must be powers of two in [16, 256] for the Triton kernels"
    return _triton_import_error()


def _use_triton(q: torch.Tensor, head_dims: tuple[int, ...]) -> bool:
    backend = os.environ.get("LIGHTSWE_LIGHTNING_BACKEND", "auto")
    if backend not in _BACKENDS:
        raise UserInputError(f"LIGHTSWE_LIGHTNING_BACKEND must be one of {_BACKENDS}, got {backend!r}")
    if backend == "reference":
        return False
    reason = _triton_unusable(q, head_dims)
    if backend == "triton" and reason:
        raise RuntimeError(f"LIGHTSWE_LIGHTNING_BACKEND=triton but {reason}; unset it to use the reference")
    return reason is None


def _check_common(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, rank: int) -> None:
    names = "[B, T, H, D]" if rank == 4 else "[B, H, D]"
    if q.dim() != rank or q.shape != k.shape or v.dim() != rank or q.shape[:-1] != v.shape[:-1]:
        raise UserInputError(f"expected q, k {names} and v with the same leading dims and its own last dim; "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"expected q, k, v all of one dtype among {_DTYPES}; got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}: cast them with .to(torch.bfloat16)")
    if not (q.device == k.device == v.device == slope.device):
        raise UserInputError(f"expected q, k, v, slope on one device; got {q.device}, {k.device}, {v.device}, "
                         f"{slope.device}")
    heads = q.shape[-2]
    if slope.shape != (heads,) or not slope.is_floating_point():
        raise UserInputError(f"expected a float slope of shape [H]=({heads},), got {slope.dtype} "
                         f"{tuple(slope.shape)}")


def _check_state(state: torch.Tensor, expected: tuple[int, ...], name: str) -> None:
    if tuple(state.shape) != expected:
        raise UserInputError(f"expected {name} of shape [N, H, D, Dv]={expected}, got {tuple(state.shape)}")


def lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal lightning attention over whole sequences, differentiable in q, k, v and initial_state.

    Args:
        q, k: [B, T, H, D]; v: [B, T, H, Dv] (bf16, fp16 or fp32, one dtype). With ``cu_seqlens``, B must
            be 1 and the N sequences are packed along T.
        slope: [H] (fp32 used), decay per step exp(-slope); gets no gradient (the slopes are fixed).
        initial_state: [N, H, D, Dv] (fp32 used) or None (N = B, or the number of packed sequences).
        cu_seqlens: [N + 1] int32/int64 cumulative lengths (0, ..., T) of the packed sequences, or None.
    Returns:
        o [B, T, H, Dv] in q's dtype, and the final state [N, H, D, Dv] fp32.
    """
    _check_common(q, k, v, slope, rank=4)
    batch, length, heads, dim = q.shape
    n_seqs = batch
    if cu_seqlens is not None:
        if batch != 1:
            raise UserInputError(f"packed input (cu_seqlens) needs batch size 1, got {batch}: "
                             f"concatenate the sequences along T")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
            raise UserInputError(f"expected integer cu_seqlens of shape [N + 1] with N >= 1, got "
                             f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
        n_seqs = cu_seqlens.numel() - 1
    if initial_state is not None:
        _check_state(initial_state, (n_seqs, heads, dim, v.shape[-1]), "initial_state")
    slope = slope.float()
    initial_state = None if initial_state is None else initial_state.float()
    if _use_triton(q, (dim, v.shape[-1])):
        from lightswe.kernels.lightning_attn.chunk import chunk_lightning_attn

        if cu_seqlens is not None:
            cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
        return chunk_lightning_attn(q.contiguous(), k.contiguous(), v.contiguous(), slope.contiguous(),
                                    None if initial_state is None else initial_state.contiguous(), cu_seqlens)
    if cu_seqlens is None:
        return lightning_attn_chunked(q, k, v, slope, initial_state)
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != length or any(a > b for a, b in itertools.pairwise(bounds)):
        raise UserInputError(f"cu_seqlens must rise from 0 to T={length}, got {bounds}")
    outs, states = [], []
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        init = None if initial_state is None else initial_state[i : i + 1]
        o, s = lightning_attn_chunked(q[:, start:end], k[:, start:end], v[:, start:end], slope, init)
        outs.append(o)
        states.append(s)
    return torch.cat(outs, dim=1), torch.cat(states, dim=0)


def lightning_attn_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """One decoding step for every sequence.

    Args:
        q, k: [B, H, D]; v: [B, H, Dv] (one dtype among bf16, fp16, fp32).
        slope: [H], decay per step exp(-slope).
        state: [B, H, D, Dv] fp32, contiguous (K-major) or V-major (``decode.is_v_major``: each head's matrix
            stored transposed, ``torch.zeros(B, H, Dv, D).transpose(-1, -2)``; on CUDA the faster layout: o's sum
            over D stays inside warps); updated in place to lambda * state + k^T v, the same bits either way.
    Returns:
        o [B, H, Dv] = q state (after the update), in q's dtype.
    Raises:
        TypeError: a state not fp32, or laid out neither way (it is updated in place, so it cannot be copied).
    """
    from lightswe.kernels.lightning_attn.decode import is_v_major  # (Triton-free; imported where decode is)

    _check_common(q, k, v, slope, rank=3)
    _check_state(state, (*q.shape, v.shape[-1]), "state")
    if state.dtype != torch.float32 or not (state.is_contiguous() or is_v_major(state)):
        raise TypeError(f"expected an fp32 state, contiguous or V-major (it is updated in place), got "
                        f"{state.dtype} with strides {state.stride()}: allocate it with torch.zeros(B, H, D, Dv, "
                        f"dtype=torch.float32) or torch.zeros(B, H, Dv, D, dtype=torch.float32).transpose(-1, -2)")
    if _use_triton(q, (q.shape[-1], v.shape[-1])):
        from lightswe.kernels.lightning_attn.decode import lightning_attn_decode_triton

        return lightning_attn_decode_triton(q.contiguous(), k.contiguous(), v.contiguous(),
                                            slope.float().contiguous(), state)
    return lightning_attn_decode_naive(q, k, v, slope, state)
