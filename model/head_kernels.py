"""Triton kernels of the LM head's softmax statistics (``model/head.py``): one pass over each chunk's logits.

``logit_stats``: from z [C, V] fp32 (scaled by 1/temperature inside), per row: log-sum-exp, log p(target) and
entropy by an online softmax (running max m, s = sum exp(z - m), t = sum exp(z - m) z; lse = m + log s,
E_p[z] = t / s, entropy = lse - E_p[z]), reading z once instead of the ~9 passes of the torch ops.

``logit_grad``: d(sum g_logp logp + g_entropy H)/d(raw logits) = (-p (g_logp + g_entropy (z - E_p z))
+ g_logp onehot) / temperature, written in bf16 for the gradient GEMMs: one pass for the statistics of the
(recomputed) logits, one to write.

Without Triton, or off CUDA, ``model/head.py`` uses the same formulas in torch ops (the CPU tests compare both
under ``TRITON_INTERPRET=1`` when Triton is installed).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU machines: model/head.py falls back to torch ops
    triton = None

BLOCK_V = 2048


def available(z: Tensor) -> bool:
    """These kernels can run on z: Triton importable and z on CUDA (or the Triton interpreter is on)."""
    import os

    return triton is not None and (z.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _row_stats(z_row, inv_t, VOCAB: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        t = tl.zeros((), tl.float32)
        for start in range(0, VOCAB, BLOCK):
            mask = start + offs < VOCAB
            z = tl.load(z_row + start + offs, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
            m_new = tl.maximum(m, tl.max(z, axis=0))
            scale = tl.exp(m - m_new)
            e = tl.where(mask, tl.exp(z - m_new), 0.0)
            s = s * scale + tl.sum(e, axis=0)
            t = t * scale + tl.sum(tl.where(mask, e * z, 0.0), axis=0)
            m = m_new
        lse = m + tl.log(s)
        return lse, t / s

    @triton.jit
    def _stats_kernel(z_ptr, stride_z, tgt_ptr, logp_ptr, ent_ptr, inv_t, VOCAB: tl.constexpr,
                      BLOCK: tl.constexpr):
        row = tl.program_id(0)
        z_row = z_ptr + row.to(tl.int64) * stride_z
        lse, mean_z = _row_stats(z_row, inv_t, VOCAB, BLOCK)
        target = tl.load(tgt_ptr + row)
        z_t = tl.load(z_row + target).to(tl.float32) * inv_t
        tl.store(logp_ptr + row, z_t - lse)
        tl.store(ent_ptr + row, lse - mean_z)

    @triton.jit
    def _grad_kernel(z_ptr, stride_z, g_ptr, stride_g, tgt_ptr, glp_ptr, gent_ptr, inv_t, VOCAB: tl.constexpr,
                     BLOCK: tl.constexpr):
        row = tl.program_id(0)
        z_row = z_ptr + row.to(tl.int64) * stride_z
        g_row = g_ptr + row.to(tl.int64) * stride_g
        lse, mean_z = _row_stats(z_row, inv_t, VOCAB, BLOCK)
        g_lp = tl.load(glp_ptr + row)
        g_ent = tl.load(gent_ptr + row)
        target = tl.load(tgt_ptr + row)
        offs = tl.arange(0, BLOCK)
        for start in range(0, VOCAB, BLOCK):
            cols = start + offs
            mask = cols < VOCAB
            z = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
            p = tl.exp(z - lse)
            g = -p * (g_lp + g_ent * (z - mean_z)) + tl.where(cols == target, g_lp, 0.0)
            tl.store(g_row + cols, (g * inv_t).to(g_row.dtype.element_ty), mask=mask)


def logit_stats(z: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(log p(target) [C], entropy [C]) fp32 of softmax(z / temperature); z [C, V] fp32 (last dim contiguous)."""
    rows, vocab = z.shape
    logp = torch.empty(rows, dtype=torch.float32, device=z.device)
    entropy = torch.empty_like(logp)
    if rows:
        _stats_kernel[(rows,)](z, z.stride(0), targets, logp, entropy, 1.0 / temperature, VOCAB=vocab,
                               BLOCK=BLOCK_V, num_warps=8)
    return logp, entropy


def logit_grad(z: Tensor, targets: Tensor, g_logp: Tensor, g_entropy: Tensor, temperature: float) -> Tensor:
    """The gradient w.r.t. the raw logits z [C, V] (before the 1/temperature), bf16 [C, V]."""
    rows, vocab = z.shape
    out = torch.empty(rows, vocab, dtype=torch.bfloat16, device=z.device)
    if rows:
        _grad_kernel[(rows,)](z, z.stride(0), out, out.stride(0), targets, g_logp.contiguous(),
                              g_entropy.contiguous(), 1.0 / temperature, VOCAB=vocab, BLOCK=BLOCK_V, num_warps=8)
    return out
