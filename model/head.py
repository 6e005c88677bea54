"""The LM head on tensor cores at near-fp32 accuracy: log-probs and entropies by chunks, logits never stored.

MiniMax-M1 keeps the LM head in fp32 so that the learner's probabilities agree with the sampler's. An fp32 GEMM
runs on the CUDA cores (33 TFLOP/s measured for this head on an H200); TF32 keeps 10 mantissa bits (~3e-4 off).
This module uses the bf16x3 split ("split-precision" emulation, e.g. Henry, Tang & Heinecke, "Leveraging the
bfloat16 Artificial Intelligence Datatype For Higher-Precision Computations", ARITH 2019):
a = a_hi + a_lo with a_hi = bf16(a), a_lo = bf16(a - a_hi), and a b ~= a_hi b_hi + a_hi b_lo + a_lo b_hi, one
bf16 GEMM with K = 3 H and fp32 accumulation and output (``torch.mm(..., out_dtype=torch.float32)``).

Accuracy (H200, H 1024, V 32,768, logits ~N(0, 3.2), against fp64; ``benchmarks/train.py --head-bench``):
bf16x3 max 1.4e-4 per log-prob (computed in fp32 with the same products on the CPU: 4.5e-5), fp32 cuBLAS
1.5e-5, a plain bf16 head ~1e-2. The excess over the CPU emulation comes from the tensor cores' fp32
accumulation (it truncates; more products make it worse: 3 pieces per operand, "bf16x6", measured 2.4e-4), so
``PIECES`` stays 2. ``LIGHTSWE_HEAD=fp32`` keeps the fp32 CUDA-core head under autocast (8x slower, 1.5e-5).

Backward: the logits of each chunk are recomputed with one bf16 GEMM (the gradient needs bf16-level accuracy only,
as every other matrix product under autocast), and d logp / dz = onehot - p, d entropy / dz = -p (z - E_p[z])
are formed in place; grad hidden and grad weight are bf16 GEMMs with fp32 output. On CUDA the softmax
statistics and the logit gradient are single Triton kernels (``model/head_kernels.py``) instead of ~9 and ~12
passes of torch ops over each [chunk, vocab] block. Memory: one [chunk, vocab] fp32 block at a time, nothing of
vocab size kept between forward and backward.

Used by ``MiniMaxForCausalLM.score`` on CUDA under autocast; on CPU (and without autocast) the plain fp32 head is
used, unchanged.
"""

from __future__ import annotations

import os
import warnings

import torch
from lightswe.model import head_kernels
from torch import Tensor
from lightswe.errors import UserInputError

PIECES = 2  # bf16 pieces per operand: 2 = bf16x3 (3 products); 3 = bf16x6 (6; no better on Hopper, see above)
# Rows per chunk of the split head when ``score`` calls it: each chunk's weight gradient is one GEMM accumulated
# into the fp32 [V, H] sum (a read-modify-write of V x H x 4 bytes per chunk: 128 chunks of 1,024 rows cost
# ~14 ms per 131K tokens at V 32,768), so chunks are large; memory: C x V x 6 bytes (fp32 logits, bf16 gradient).
CHUNK_ROWS = 8192
# Keep each row's log-probs (as fp16 offsets from block maxima: V x 2 bytes per token), log-sum-exp and E_p[z]
# from the forward: the backward then forms the logit gradient in one pass over them instead of recomputing the
# logits (a bf16 GEMM) and their statistics (model/head_kernels.py; benchmarks/train.py --head-save). Needs the
# Triton kernels (CUDA).
SAVE_LOGITS = True
HEADS = ("auto", "fp32")


def use_split_head(hidden: Tensor) -> bool:
    """The split head runs for CUDA inputs under autocast unless ``LIGHTSWE_HEAD=fp32`` (auto | fp32)."""
    choice = os.environ.get("LIGHTSWE_HEAD", "auto")
    if choice not in HEADS:
        raise UserInputError(f"LIGHTSWE_HEAD={choice!r}; expected one of {', '.join(HEADS)}")
    return choice == "auto" and hidden.is_cuda and torch.is_autocast_enabled("cuda")


def split_bf16(x: Tensor, pieces: int = 2) -> list[Tensor]:
    """bf16 pieces of x (fp32, any shape) whose sum is x to ~2^-(8 x pieces) relative: x0 = bf16(x),
    x1 = bf16(x - x0), ..."""
    out, rest = [], x.float()
    for i in range(pieces):
        part = rest.to(torch.bfloat16)
        out.append(part)
        if i + 1 < pieces:
            rest = rest - part.float()
    return out


def split_operands(a: Tensor, b: Tensor, pieces: int) -> tuple[Tensor, Tensor]:
    """(A, B) with A @ B^T ~= a @ b^T: the pieces' products a_i b_j with i + j < pieces, stacked along the
    contraction dimension (K x 3 for 2 pieces, K x 6 for 3), so one bf16 GEMM with fp32 accumulation sums them."""
    pa, pb = split_bf16(a, pieces), split_bf16(b, pieces)
    pairs = [(i, j) for i in range(pieces) for j in range(pieces) if i + j < pieces]
    return torch.cat([pa[i] for i, _ in pairs], dim=1), torch.cat([pb[j] for _, j in pairs], dim=1)


_OUT_DTYPE_MM = [True]  # torch.mm(..., out_dtype=fp32) available for bf16 on this CUDA build (checked once)


def mm_fp32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with bf16 operands, fp32 accumulation and fp32 output [M, N]. CUDA: one tensor-core GEMM
    (``out_dtype``, torch >= 2.8); elsewhere (or where that overload is missing) the same products in fp32."""
    if a.is_cuda and _OUT_DTYPE_MM[0]:
        matmul = torch.backends.cuda.matmul
        reduced = matmul.allow_bf16_reduced_precision_reduction
        try:
            matmul.allow_bf16_reduced_precision_reduction = False  # no bf16 split-K partial sums
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError) as err:  # an older build: exact but slow fallback, said once
            _OUT_DTYPE_MM[0] = False
            warnings.warn(f"torch.mm(out_dtype=float32) unavailable ({err}); the LM head falls back to fp32 GEMMs",
                          stacklevel=2)
        finally:
            matmul.allow_bf16_reduced_precision_reduction = reduced
    return torch.mm(a.float(), b.float())


def logprob_entropy(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """From fp32 logits z [C, V] and targets [C]: (log p(target) [C], entropy [C]), fp32."""
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, targets[:, None]).squeeze(-1) - lse
    entropy = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
    return logp, entropy


def _logit_grad(z: Tensor, targets: Tensor, g_logp: Tensor, g_entropy: Tensor) -> Tensor:
    """d(sum g_logp logp + g_entropy H)/dz = -p (g_logp + g_entropy (z - E_p z)) + g_logp onehot, in place on z."""
    p = torch.softmax(z, dim=-1)
    mean_z = (p * z).sum(-1, keepdim=True)
    z.sub_(mean_z).mul_(g_entropy[:, None]).add_(g_logp[:, None]).mul_(p).neg_()
    return z.scatter_add_(-1, targets[:, None], g_logp[:, None])


class SplitHeadLogprobs(torch.autograd.Function):
    """(logp [N], entropy [N]) of ``targets`` under softmax(hidden @ weight^T / temperature), fp32-accurate.

    hidden [N, H] fp32 (bf16 accepted), weight [V, H] fp32, targets [N] long. Differentiable in hidden and weight.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk_size: int
                ) -> tuple[Tensor, Tensor]:
        pieces = PIECES
        _, w_split = split_operands(weight[:0], weight, pieces)  # [V, 3H] (bf16x3)
        logps, entropies = [], []
        rows, vocab = hidden.shape[0], weight.shape[0]
        save = (SAVE_LOGITS and any(ctx.needs_input_grad[:2]) and rows > 0
                and head_kernels.available(hidden.new_empty(0)))
        saved = head_kernels.saved_buffers(rows, vocab, hidden.device) if save else None
        for start in range(0, rows, chunk_size):
            end = start + chunk_size
            h_split, _ = split_operands(hidden[start:end], weight[:0], pieces)
            z = mm_fp32(h_split, w_split.T)  # [C, V] fp32
            if head_kernels.available(z):  # one pass over z (model/head_kernels.py)
                lp, ent = head_kernels.logit_stats(z, targets[start:end], temperature,
                                                   None if saved is None else tuple(t[start:end] for t in saved))
            else:
                if temperature != 1.0:
                    z.div_(temperature)
                lp, ent = logprob_entropy(z, targets[start:start + chunk_size])
            logps.append(lp)
            entropies.append(ent)
        ctx.save_for_backward(hidden, weight, targets, *(saved or ()))
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return (torch.cat(logps) if logps else empty), (torch.cat(entropies) if entropies else empty)

    @staticmethod
    def backward(ctx, g_logp: Tensor, g_entropy: Tensor):
        hidden, weight, targets, *saved = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk_size
        w_b = weight.to(torch.bfloat16)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk):
            end = start + chunk
            h_b = hidden[start:end].to(torch.bfloat16)
            g_lp, g_ent = g_logp[start:end].float(), g_entropy[start:end].float()
            if saved:  # the forward's bf16 logits and statistics: one pass, no GEMM (overwrites them)
                gz_b = head_kernels.logit_grad_saved(tuple(t[start:end] for t in saved), targets[start:end], g_lp,
                                                     g_ent, temperature)
            else:
                z = mm_fp32(h_b, w_b.T)
                if head_kernels.available(z):
                    gz_b = head_kernels.logit_grad(z, targets[start:end], g_lp, g_ent, temperature)
                else:
                    if temperature != 1.0:
                        z.div_(temperature)
                    gz = _logit_grad(z, targets[start:end], g_lp, g_ent)
                    if temperature != 1.0:
                        gz.div_(temperature)
                    gz_b = gz.to(torch.bfloat16)
                    del gz
                del z
            if grad_hidden is not None:
                grad_hidden[start:end] = mm_fp32(gz_b, w_b)
            if grad_weight is not None:
                grad_weight += mm_fp32(gz_b.T, h_b)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def head_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0,
                  chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """fp32-accurate (log p(targets) [N], entropy [N]) from hidden [N, H] and the LM head weight [V, H] by the
    bf16x3 split (see the module docstring); autocast is turned off inside."""
    with torch.autocast(hidden.device.type, enabled=False):
        return SplitHeadLogprobs.apply(hidden, weight, targets, float(temperature), int(chunk_size))
