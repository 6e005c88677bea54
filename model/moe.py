"""The MoE experts as grouped matrix products: tokens sorted by expert on the device, no host sync.

``SparseMoE`` (``model/layers.py``) keeps its per-expert ``nn.Linear`` modules (the released checkpoint names);
this module runs them as three grouped GEMMs per layer (``torch._grouped_mm``, CUTLASS on sm90, bf16) instead
of a Python loop of ~3 x E matrix products with a host sync for the group sizes.

Backend (``LIGHTSWE_MOE_BACKEND``): ``auto`` (default: grouped on CUDA sm90+ when the computation runs in bf16,
i.e. under bf16 autocast or with bf16 weights; the reference loop elsewhere, so CPU numerics are unchanged),
``grouped`` (force it, also on CPU: ``torch._grouped_mm`` has a CPU fallback used by the tests) or ``loop``.

Layout (as torchtitan's MoE): the A = N x k assignments, sorted by expert (stable), are written into a buffer of
M = A + E x ALIGN rows where expert e's rows start at a multiple of ALIGN and every expert has at least ALIGN
rows (padding rows are zero, so they add nothing to any gradient); the last expert's group runs to M. M is
known without reading the counts, so nothing waits for the GPU. Extra work: E x ALIGN rows (512 of 32,768 for
``minimax-1b`` at 16K tokens).
"""

from __future__ import annotations

import functools
import os

import torch
from lightswe.model import moe_kernels
from lightswe.model.fused import (combine_rows, combine_rows_backward, compile_enabled, gather_rows, run_compiled,
                                  sum_rows, swiglu, weighted_sum)
from torch import nn
from lightswe.errors import UserInputError

ALIGN = 16  # rows; group starts on 16-row boundaries (TMA-friendly; no expert group is ever empty)
BACKENDS = ("auto", "grouped", "loop")
# The experts' SwiGLU backward as one Triton pass on CUDA (model/moe_kernels.py; benchmarks/train.py --swiglu-kernel)
SWIGLU_KERNEL = True
# The dispatch (tokens to their padded expert rows) and the weighted combine as compiled one-pass chains on CUDA
# (``_DispatchFused``, ``_Combine``; benchmarks/train.py --fused-dispatch)
FUSED_DISPATCH = True


def moe_backend() -> str:
    """``LIGHTSWE_MOE_BACKEND`` (auto | grouped | loop), validated."""
    name = os.environ.get("LIGHTSWE_MOE_BACKEND", "auto")
    if name not in BACKENDS:
        raise UserInputError(f"LIGHTSWE_MOE_BACKEND={name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the expert matrix products run in: autocast's if it is on for x's device, else the weight's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


def use_grouped(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``SparseMoE`` runs the grouped path for input x (see the module docstring)."""
    backend = moe_backend()
    if backend != "auto":
        return backend == "grouped"
    return x.is_cuda and compute_dtype(x, weight) == torch.bfloat16 and _hopper_or_newer(x.device)


@functools.cache
def _hopper_or_newer(device: torch.device) -> bool:
    """torch._grouped_mm's CUTLASS kernels are for sm90+; older GPUs keep the loop (measured only on an H200)."""
    return torch.cuda.get_device_capability(device) >= (9, 0)


class _SwiGLU(torch.autograd.Function):
    """``fused.swiglu`` on h13 [M, 2 I]: the forward is the compiled chain (the same values), the backward one
    Triton pass (``model/moe_kernels.py``) instead of Inductor's concatenating backward."""

    @staticmethod
    def forward(ctx, h13: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h13)
        return run_compiled(swiglu, h13)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (h13,) = ctx.saved_tensors
        return moe_kernels.swiglu_backward(h13, grad)


def _swiglu(h13: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of h13 = [gate | up]: the Triton backward where it runs (CUDA, training, compiled chains
    on, ``SWIGLU_KERNEL``, bf16/fp16), else ``fused.swiglu``."""
    if (SWIGLU_KERNEL and h13.dtype in (torch.bfloat16, torch.float16) and h13.requires_grad
            and compile_enabled(h13) and moe_kernels.available(h13)):
        return _SwiGLU.apply(h13)
    return swiglu(h13)


class _StackWeights(torch.autograd.Function):
    """cat(weights, dim 0) cast to ``dtype`` in one kernel; the gradient comes back split and in each weight's
    dtype. Stacks the experts' fp32 master weights into the [E, out, in] operand of a grouped GEMM per forward
    (reading 4 bytes and writing 2 per parameter under bf16 autocast, as autocast's own per-matrix casts do)."""

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *weights: torch.Tensor) -> torch.Tensor:
        ctx.sizes = [w.shape[0] for w in weights]
        ctx.dtypes = [w.dtype for w in weights]
        rows = sum(ctx.sizes)
        out = torch.empty(rows, *weights[0].shape[1:], dtype=dtype, device=weights[0].device)
        torch._foreach_copy_(list(out.split(ctx.sizes, dim=0)), list(weights))  # one multi-tensor kernel
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dtype = ctx.dtypes[0]
        return (None, *grad.to(dtype).split(ctx.sizes, dim=0))


class _Dispatch(torch.autograd.Function):
    """xs = [x; 0][source] (each token copied to its k padded rows, padding rows zero). Backward gathers each
    token's k row gradients and sums them (no atomics, no sort: ``position`` lists a token's k rows)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, source: torch.Tensor, position: torch.Tensor, top_k: int) -> torch.Tensor:
        ctx.save_for_backward(position)
        ctx.top_k = top_k
        return torch.cat([x, x.new_zeros(1, x.shape[1])]).index_select(0, source)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (position,) = ctx.saved_tensors
        rows = grad.index_select(0, position)
        return rows.view(-1, ctx.top_k, grad.shape[1]).sum(1), None, None, None


class _Gather(torch.autograd.Function):
    """ys[position] for ``position`` without repeats; backward scatters back (index_copy, no accumulation)."""

    @staticmethod
    def forward(ctx, ys: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(position)
        ctx.rows = ys.shape[0]
        return ys.index_select(0, position)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (position,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.rows, grad.shape[1])
        return out.index_copy_(0, position, grad), None


class _DispatchFused(torch.autograd.Function):
    """``_Dispatch`` as two compiled one-pass chains (``fused.gather_rows`` / ``fused.sum_rows``): the same
    values, without the appended-zero-row copy of x or the gathered [N k, H] gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, source: torch.Tensor, position: torch.Tensor, top_k: int) -> torch.Tensor:
        ctx.save_for_backward(position)
        ctx.top_k = top_k
        return run_compiled(gather_rows, x, source)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (position,) = ctx.saved_tensors
        return run_compiled(sum_rows, grad, position, ctx.top_k), None, None, None


class _Combine(torch.autograd.Function):
    """fp32 sum_j weights[n, j] ys[position[n k + j]] (``_Gather`` then ``weighted_sum``) as compiled chains that
    read the product rows where they are (``fused.combine_rows`` / ``combine_rows_backward``)."""

    @staticmethod
    def forward(ctx, ys: torch.Tensor, position: torch.Tensor, weights: torch.Tensor, assignment: torch.Tensor
                ) -> torch.Tensor:
        ctx.save_for_backward(ys, position, weights, assignment)
        return run_compiled(combine_rows, ys, position, weights)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ys, position, weights, assignment = ctx.saved_tensors
        d_ys, d_weights = run_compiled(combine_rows_backward, grad.contiguous(), ys, position, weights, assignment)
        return d_ys, None, d_weights, None


def stacked_expert_weights(experts: nn.ModuleList, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(w13 [E, 2 I, H], w2 [E, H, I]) in ``dtype``: per expert w1 then w3 rows, as nn.Linear stores them."""
    with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        w13 = _StackWeights.apply(dtype, *[w for e in experts for w in (e.w1.weight, e.w3.weight)])
        w2 = _StackWeights.apply(dtype, *[e.w2.weight for e in experts])
    num = len(experts)
    return w13.view(num, -1, w13.shape[-1]), w2.view(num, -1, w2.shape[-1])


def expert_layout(chosen: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, ...]:
    """The padded expert-sorted layout of the assignments (module docstring), on chosen's device, no host sync.

    chosen [N, k] long expert ids. Returns (counts [E], order [A] sorted slot -> assignment a = n k + j,
    dest [A] padded row of each sorted slot, source [M] token of each padded row (N for padding rows),
    position [A] padded row of each assignment, offsets [E] int32 end row of each expert's group), all long
    but offsets, with A = N k and M = A + E x ALIGN."""
    tokens, top_k = chosen.shape
    assignments = tokens * top_k
    rows = assignments + num_experts * ALIGN  # static bound on the padded layout
    flat = chosen.flatten()  # assignment a = n * k + j
    counts = torch.zeros(num_experts, dtype=torch.long, device=chosen.device).scatter_add_(0, flat, torch.ones_like(flat))
    order = flat.argsort(stable=True)  # sorted slot -> assignment
    padded = ((counts + ALIGN - 1) // ALIGN * ALIGN).clamp(min=ALIGN)
    padded_start = padded.cumsum(0) - padded
    start = counts.cumsum(0) - counts
    expert_of_slot = flat[order]
    slot = torch.arange(assignments, device=chosen.device)
    dest = slot - start[expert_of_slot] + padded_start[expert_of_slot]  # padded row of each sorted slot
    source = torch.full((rows,), tokens, dtype=torch.long, device=chosen.device)  # row `tokens` is the zero row
    source[dest] = order // top_k
    offsets = (padded_start + padded).to(torch.int32)
    offsets[-1:].fill_(rows)  # the last group takes the tail of zero rows (a fill: ``offsets[-1] = rows`` copies
    # the int from host memory, which waits for the GPU to drain: one stall per MoE layer, benchmarks/train.py)
    position = torch.empty_like(dest)
    position[order] = dest  # padded row of each assignment, in assignment order
    return counts, order, dest, source, position, offsets


def grouped_experts(x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, experts: nn.ModuleList,
                    out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dropless top-k SwiGLU experts as three grouped GEMMs.

    x [N, H] (any float dtype; the products run in ``compute_dtype``), chosen [N, k] long expert ids,
    weights [N, k] fp32 routing weights. Returns (out [N, H] in ``out_dtype`` (default x's) = sum_j weights[n, j] *
    expert_{chosen[n, j]}(x[n]), counts [E] long assignments per expert). Equal to the per-expert loop up to
    the products' rounding (tests/model/test_moe.py).
    """
    num_experts = len(experts)
    tokens, hidden = x.shape
    top_k = chosen.shape[1]
    dtype = compute_dtype(x, experts[0].w1.weight)
    counts, order, dest, source, position, offsets = expert_layout(chosen, num_experts)
    rows = source.shape[0]
    w13, w2 = stacked_expert_weights(experts, dtype)
    # CUDA training with an fp32 output: the dispatch and combine as compiled one-pass chains (FUSED_DISPATCH)
    one_pass = (FUSED_DISPATCH and compile_enabled(x) and (out_dtype or x.dtype) == torch.float32
                and weights.dtype == torch.float32)
    with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        xs = (_DispatchFused if one_pass else _Dispatch).apply(x.to(dtype), source, position, top_k)  # [M, H]
        h13 = torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offsets)  # [M, 2 I]
        ys = torch._grouped_mm(_swiglu(h13), w2.transpose(-2, -1), offs=offsets)  # [M, H]
        if one_pass:
            assignment = torch.full((rows,), -1, dtype=torch.long, device=x.device)
            assignment[dest] = order  # the assignment each padded row holds (-1: padding)
            out = _Combine.apply(ys, position, weights, assignment)
        else:
            out = weighted_sum(_Gather.apply(ys, position).view(tokens, top_k, hidden), weights,
                               out_dtype or x.dtype)
    return out, counts
