"""The fp32-accurate LM head on tensor cores: log-probs and entropies by chunks, logits never stored.

MiniMax-M1 keeps the LM head in fp32 so that the learner's probabilities agree with the sampler's. An fp32 GEMM
runs on the CUDA cores (~60 TFLOP/s on an H100/H200); TF32 keeps 10 mantissa bits, ~3e-4 off in log-probs. This
module uses the bf16x3 split ("split-precision" / Ozaki-style emulation, e.g. Henry, Tang & Heinecke,
"Leveraging the bfloat16 Artificial Intelligence Datatype For Higher-Precision Computations", ARITH 2019):
a = a_hi + a_lo with a_hi = bf16(a), a_lo = bf16(a - a_hi), and a b ~= a_hi b_hi + a_hi b_lo + a_lo b_hi, one
bf16 GEMM with K = 3 H and fp32 accumulation and output (``torch.mm(..., out_dtype=torch.float32)``). The dropped
a_lo b_lo term and the rounding of the lo parts are ~2^-16 relative per product: log-probs within ~1e-5 of fp64
(``tests/model/test_head.py`` and ``tests/model/test_gpu.py`` check <= 1e-4).

Backward: the logits of each chunk are recomputed with one bf16 GEMM (the gradient needs bf16-level accuracy only,
as every other matrix product under autocast), and d logp / dz = onehot - p, d entropy / dz = -p (z - E_p[z])
are formed in place; grad hidden and grad weight are bf16 GEMMs with fp32 output. Memory: one [chunk, vocab] fp32
block at a time, nothing of vocab size kept between forward and backward.

Used by ``MiniMaxForCausalLM.score`` on CUDA under autocast; on CPU (and without autocast) the plain fp32 head is
used, unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor


def split_bf16(x: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) bf16 with hi + lo = x to ~2^-16 relative (x fp32, any shape)."""
    hi = x.to(torch.bfloat16)
    return hi, (x - hi.float()).to(torch.bfloat16)


def mm_fp32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with bf16 operands, fp32 accumulation and fp32 output [M, N]. CUDA: one tensor-core GEMM
    (``out_dtype``); elsewhere the same products in fp32 (exact for bf16 inputs up to fp32 accumulation)."""
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
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
        w_hi, w_lo = split_bf16(weight.float())
        w3 = torch.cat([w_hi, w_lo, w_hi], dim=1)  # [V, 3H]
        del w_lo
        logps, entropies = [], []
        for start in range(0, hidden.shape[0], chunk_size):
            h_hi, h_lo = split_bf16(hidden[start:start + chunk_size].float())
            z = mm_fp32(torch.cat([h_hi, h_hi, h_lo], dim=1), w3.T)  # [C, V] fp32
            if temperature != 1.0:
                z.div_(temperature)
            lp, ent = logprob_entropy(z, targets[start:start + chunk_size])
            logps.append(lp)
            entropies.append(ent)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return (torch.cat(logps) if logps else empty), (torch.cat(entropies) if entropies else empty)

    @staticmethod
    def backward(ctx, g_logp: Tensor, g_entropy: Tensor):
        hidden, weight, targets = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk_size
        w_b = weight.to(torch.bfloat16)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk):
            end = start + chunk
            h_b = hidden[start:end].to(torch.bfloat16)
            z = mm_fp32(h_b, w_b.T)
            if temperature != 1.0:
                z.div_(temperature)
            gz = _logit_grad(z, targets[start:end], g_logp[start:end].float(), g_entropy[start:end].float())
            if temperature != 1.0:
                gz.div_(temperature)
            gz_b = gz.to(torch.bfloat16)
            del z, gz
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
