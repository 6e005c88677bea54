"""The experts' SwiGLU backward as one Triton pass (``model/moe.py``): each element of h13 read once, written once.

h13 [M, 2 I] bf16 holds each row's gate (first I columns) and up (last I) projections; the forward is
y = silu(gate) * up (the compiled chain of ``model/fused.py``). Given dy [M, I] the backward writes
dh13 = [d gate | d up] with the formulas and bf16 roundings of eager PyTorch's two autograd nodes (Mul, then
Silu; ATen's ``silu_backward``): s = bf16(silu(gate)), d up = bf16(dy s), d s = bf16(dy up),
d gate = bf16(d s sigmoid(gate) (1 + gate (1 - sigmoid(gate)))), in fp32 in between. Inductor's compiled
backward of the same chain writes dh13 as a concatenation, reading h13 and dy twice (measured at about half of
the bandwidth bound on an H200, benchmarks/train.py ``--profile``); this kernel reads 3 and writes 2 elements per
(row, column) pair: the bound. Gradients agree with eager's at bf16 rounding (the exponential and the fp32
operation order may differ in the last bit before rounding; tests/model/test_moe.py).
"""

from __future__ import annotations

import torch
from torch import Tensor
from lightswe.errors import UserInputError

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU machines: model/moe.py keeps the compiled (or eager) chain
    triton = None

BLOCK_M, BLOCK_I = 16, 256


def available(x: Tensor) -> bool:
    """The kernel can run on x: Triton importable and x on CUDA (or the Triton interpreter is on)."""
    import os

    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _swiglu_bwd_kernel(h_ptr, dy_ptr, dh_ptr, M, INNER: tl.constexpr, BM: tl.constexpr, BI: tl.constexpr):
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        cols = tl.program_id(1) * BI + tl.arange(0, BI)
        mask = (rows[:, None] < M) & (cols[None, :] < INNER)
        r64 = rows.to(tl.int64)[:, None]
        h_off = r64 * (2 * INNER) + cols[None, :]
        gate = tl.load(h_ptr + h_off, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(h_ptr + h_off + INNER, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + r64 * INNER + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        one_plus = 1.0 + tl.exp(-gate)
        sig = 1.0 / one_plus
        s = (gate / one_plus).to(tl.bfloat16).to(tl.float32)  # ATen's silu: x / (1 + exp(-x))
        d_up = dy * s
        d_s = (dy * up).to(tl.bfloat16).to(tl.float32)
        d_gate = d_s * sig * (1.0 + gate * (1.0 - sig))
        tl.store(dh_ptr + h_off, d_gate.to(dh_ptr.dtype.element_ty), mask=mask)
        tl.store(dh_ptr + h_off + INNER, d_up.to(dh_ptr.dtype.element_ty), mask=mask)


def swiglu_backward(h13: Tensor, dy: Tensor) -> Tensor:
    """dh13 [M, 2 I] (h13's dtype) of y = silu(gate) * up given h13 [M, 2 I] and dy [M, I] (bf16 or fp16,
    contiguous after ``.contiguous()``). Raises ValueError on mismatched shapes."""
    rows, width = h13.shape
    if width % 2 or dy.shape != (rows, width // 2):
        raise UserInputError(f"expected h13 [M, 2I] and dy [M, I], got {tuple(h13.shape)} and {tuple(dy.shape)}")
    h13, dy = h13.contiguous(), dy.contiguous()
    out = torch.empty_like(h13)
    inner = width // 2
    if rows:
        grid = (triton.cdiv(rows, BLOCK_M), triton.cdiv(inner, BLOCK_I))
        _swiglu_bwd_kernel[grid](h13, dy, out, rows, inner, BLOCK_M, BLOCK_I, num_warps=4)
    return out
