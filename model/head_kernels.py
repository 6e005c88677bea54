"""Triton kernels of the LM head's softmax statistics (``model/head.py``): one pass over each chunk's logits.

``logit_stats``: from z [C, V] fp32 (scaled by 1/temperature inside), per row: log-sum-exp, log p(target) and
entropy by an online softmax (running max m, s = sum exp(z - m), t = sum exp(z - m) z; lse = m + log s,
E_p[z] = t / s, entropy = lse - E_p[z]), reading z once instead of the ~9 passes of the torch ops.

``logit_grad``: d(sum g_logp logp + g_entropy H)/d(raw logits) = (-p (g_logp + g_entropy (z - E_p z))
+ g_logp onehot) / temperature, written in bf16 for the gradient GEMMs: one pass for the statistics of the
(recomputed) logits, one to write.

With ``saved`` buffers, ``logit_stats`` also keeps, in the same pass, each row's log-sum-exp and E_p[z / T],
each block's running maximum m_b and z / T - m_b in fp16 (<= 0; for a token of probability p its magnitude is
at most -log p, so the tokens that carry the gradient are kept to ~2^-11 of their log-prob: z itself in 16 bits
would put the 1 - p of a confident token off by tens of %); ``logit_grad_saved`` forms the gradient from them in
one pass, in place (as bf16): the backward then needs neither the logits' recomputation (a GEMM) nor the
statistics pass.

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
    def _row_stats(z_row, inv_t, zs_row, mb_row, VOCAB: tl.constexpr, BLOCK: tl.constexpr, SAVE: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        t = tl.zeros((), tl.float32)
        for start in range(0, VOCAB, BLOCK):
            mask = start + offs < VOCAB
            z = tl.load(z_row + start + offs, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
            m_new = tl.maximum(m, tl.max(z, axis=0))
            if SAVE:
                tl.store(zs_row + start + offs, (z - m_new).to(zs_row.dtype.element_ty), mask=mask)
                tl.store(mb_row + start // BLOCK, m_new)
            scale = tl.exp(m - m_new)
            e = tl.where(mask, tl.exp(z - m_new), 0.0)
            s = s * scale + tl.sum(e, axis=0)
            t = t * scale + tl.sum(tl.where(mask, e * z, 0.0), axis=0)
            m = m_new
        lse = m + tl.log(s)
        return lse, t / s

    @triton.jit
    def _stats_kernel(z_ptr, stride_z, tgt_ptr, logp_ptr, ent_ptr, zs_ptr, stride_zs, mb_ptr, stride_mb, lse_ptr,
                      mean_ptr, inv_t, VOCAB: tl.constexpr, BLOCK: tl.constexpr, SAVE: tl.constexpr):
        row = tl.program_id(0)
        z_row = z_ptr + row.to(tl.int64) * stride_z
        lse, mean_z = _row_stats(z_row, inv_t, zs_ptr + row.to(tl.int64) * stride_zs, mb_ptr + row * stride_mb,
                                 VOCAB, BLOCK, SAVE)
        target = tl.load(tgt_ptr + row)
        z_t = tl.load(z_row + target).to(tl.float32) * inv_t
        tl.store(logp_ptr + row, z_t - lse)
        tl.store(ent_ptr + row, lse - mean_z)
        if SAVE:
            tl.store(lse_ptr + row, lse)
            tl.store(mean_ptr + row, mean_z)

    @triton.jit
    def _grad_saved_kernel(zs_ptr, g_ptr, stride_zs, mb_ptr, stride_mb, tgt_ptr, glp_ptr, gent_ptr, lse_ptr,
                           mean_ptr, inv_t, VOCAB: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        zs_row = zs_ptr + row.to(tl.int64) * stride_zs
        g_row = g_ptr + row.to(tl.int64) * stride_zs  # the same memory, written as bf16
        lse = tl.load(lse_ptr + row)
        entropy = lse - tl.load(mean_ptr + row)
        g_lp = tl.load(glp_ptr + row)
        g_ent = tl.load(gent_ptr + row)
        target = tl.load(tgt_ptr + row)
        offs = tl.arange(0, BLOCK)
        for start in range(0, VOCAB, BLOCK):
            cols = start + offs
            mask = cols < VOCAB
            logp = tl.load(zs_row + cols, mask=mask, other=0.0).to(tl.float32) + (
                tl.load(mb_ptr + row * stride_mb + start // BLOCK) - lse)
            p = tl.exp(logp)
            g = -p * (g_lp + g_ent * (logp + entropy)) + tl.where(cols == target, g_lp, 0.0)
            tl.store(g_row + cols, (g * inv_t).to(g_row.dtype.element_ty), mask=mask)

    @triton.jit
    def _grad_kernel(z_ptr, stride_z, g_ptr, stride_g, tgt_ptr, glp_ptr, gent_ptr, inv_t, VOCAB: tl.constexpr,
                     BLOCK: tl.constexpr):
        row = tl.program_id(0)
        z_row = z_ptr + row.to(tl.int64) * stride_z
        g_row = g_ptr + row.to(tl.int64) * stride_g
        lse, mean_z = _row_stats(z_row, inv_t, z_row, z_row, VOCAB, BLOCK, False)
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


def saved_buffers(rows: int, vocab: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Empty (zs [rows, V] fp16, block maxima [rows, ceil(V / BLOCK_V)] fp32, lse [rows], mean [rows] fp32) for
    ``logit_stats(..., saved=...)``."""
    blocks = -(-vocab // BLOCK_V)
    return (torch.empty(rows, vocab, dtype=torch.float16, device=device),
            torch.empty(rows, blocks, dtype=torch.float32, device=device),
            torch.empty(rows, dtype=torch.float32, device=device), torch.empty(rows, dtype=torch.float32, device=device))


def logit_stats(z: Tensor, targets: Tensor, temperature: float,
                saved: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """(log p(target) [C], entropy [C]) fp32 of softmax(z / temperature); z [C, V] fp32 (last dim contiguous).

    ``saved`` (rows of ``saved_buffers``): also filled, in the same pass, with z / temperature - m_b in fp16 (m_b
    the running maximum after the element's block), the m_b, and each row's log-sum-exp and E_p[z / temperature]
    (for ``logit_grad_saved``)."""
    rows, vocab = z.shape
    logp = torch.empty(rows, dtype=torch.float32, device=z.device)
    entropy = torch.empty_like(logp)
    zs, mb, lse, mean = saved if saved is not None else (z, z, logp, entropy)  # (unused without SAVE)
    if rows:
        _stats_kernel[(rows,)](z, z.stride(0), targets, logp, entropy, zs, zs.stride(0), mb, mb.stride(0), lse, mean,
                               1.0 / temperature, VOCAB=vocab, BLOCK=BLOCK_V, SAVE=saved is not None, num_warps=8)
    return logp, entropy


def logit_grad_saved(saved: tuple[Tensor, Tensor, Tensor, Tensor], targets: Tensor, g_logp: Tensor,
                     g_entropy: Tensor, temperature: float) -> Tensor:
    """``logit_grad`` from what ``logit_stats(..., saved=...)`` kept: returns the gradient w.r.t. the raw logits
    [C, V] bf16, written over ``saved``'s fp16 block (same memory)."""
    zs, mb, lse, mean = saved
    rows, vocab = zs.shape
    out = zs.view(torch.bfloat16)
    if rows:
        _grad_saved_kernel[(rows,)](zs, out, zs.stride(0), mb, mb.stride(0), targets, g_logp.contiguous(),
                                    g_entropy.contiguous(), lse, mean, 1.0 / temperature, VOCAB=vocab, BLOCK=BLOCK_V,
                                    num_warps=8)
    return out


def logit_grad(z: Tensor, targets: Tensor, g_logp: Tensor, g_entropy: Tensor, temperature: float) -> Tensor:
    """The gradient w.r.t. the raw logits z [C, V] (before the 1/temperature), bf16 [C, V]."""
    rows, vocab = z.shape
    out = torch.empty(rows, vocab, dtype=torch.bfloat16, device=z.device)
    if rows:
        _grad_kernel[(rows,)](z, z.stride(0), out, out.stride(0), targets, g_logp.contiguous(),
                              g_entropy.contiguous(), 1.0 / temperature, VOCAB=vocab, BLOCK=BLOCK_V, num_warps=8)
    return out
