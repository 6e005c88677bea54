"""The decoder's elementwise chains, fused by ``torch.compile`` when training on CUDA.

At ``minimax-1b``'s size (hidden 1024) a learner step spends more GPU time in memory-bound elementwise kernels
(RMSNorm's 6 passes, the residual's 3, SwiGLU's 3, casts) than in matrix products (benchmarks/train.py
profile). Each function here is plain torch code, the same expression the modules used before; ``fused`` runs
it compiled (Inductor, one or two Triton kernels forward and backward) only when all of these hold:
its first tensor is on CUDA, autograd is recording (training; the sampler's no-grad path and its own CUDA-graph
compile stay eager), no compile is already tracing, and ``LIGHTSWE_COMPILE`` is not ``0``. Everywhere else
(CPU, the main job's CPU learner) the eager function runs: numerics there are unchanged. A function whose
compilation fails falls back to eager for the rest of the process, with a warning. Compiled chains round their
bf16 intermediates as eager does (Inductor's ``emulate_precision_casts``, which also keeps Triton from fusing
multiply-adds; measured to cost 1.0-1.7% of a ``minimax-1b`` learner step, benchmarks/train.py ``--emulate``),
and on CUDA the norms' mean square is order-independent (``rms_norm``): a compiled chain computes what eager
computes, bit for bit, and so does the sampler's compiled decode step (issue 16; tests/model/test_fused.py).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

# Inductor's emulate_precision_casts: round every bf16/fp16 intermediate as eager does (see ``fused``). The
# benchmark (benchmarks/train.py --emulate) switches it to measure what it costs.
EMULATE_PRECISION_CASTS = True
# RMSNorm's mean square in fp64 on CUDA: the same fp32 result whatever the reduction order (see ``rms_norm``)
NORM_FP64 = True
_compiled: dict[tuple[Callable, bool], Callable] = {}


def set_emulate_precision_casts(flag: bool) -> None:
    """Compile the chains with (True, the default) or without Inductor's ``emulate_precision_casts`` from now
    on. Resets torch.compile's caches (``torch._dynamo.reset``): call it between runs, never inside one."""
    global EMULATE_PRECISION_CASTS
    if flag != EMULATE_PRECISION_CASTS:
        EMULATE_PRECISION_CASTS = flag
        _compiled.clear()
        torch._dynamo.reset()


def compile_enabled(x: torch.Tensor) -> bool:
    """Whether ``fused`` functions run compiled for this input (see the module docstring)."""
    if not (x.is_cuda and torch.is_grad_enabled()) or os.environ.get("LIGHTSWE_COMPILE", "1") == "0":
        return False
    return not torch.compiler.is_compiling()


def fused(fn: Callable) -> Callable:
    """Decorator: run ``fn`` through torch.compile when ``compile_enabled(first argument)``."""

    @functools.wraps(fn)
    def wrapper(*args):
        if not compile_enabled(args[0]):
            return fn(*args)
        return _call_compiled(fn, args)

    return wrapper


def run_compiled(fused_fn: Callable, *args):
    """``fused_fn`` (a ``fused`` function) compiled whatever the grad mode: for a custom autograd Function
    whose forward or backward (run without autograd recording) must compute what the compiled training chain
    computes. Eager where ``LIGHTSWE_COMPILE=0``, off CUDA or inside a compile, as ``fused``."""
    fn = fused_fn.__wrapped__
    if not args[0].is_cuda or os.environ.get("LIGHTSWE_COMPILE", "1") == "0" or torch.compiler.is_compiling():
        return fn(*args)
    return _call_compiled(fn, args)


def _call_compiled(fn: Callable, args: tuple):
    """fn(*args) through its cached torch.compile; eager for the rest of the process if compiling it fails."""
    key = (fn, EMULATE_PRECISION_CASTS)
    compiled = _compiled.get(key)
    if compiled is None:
        # keep eager's bf16/fp16 rounding of every intermediate: the sampler (model/engine.py) mirrors the
        # eager expressions, and its log-probs must match the learner's (issue 16: mean |diff| <= 1e-3)
        compiled = _compiled[key] = torch.compile(fn, dynamic=None, options={"emulate_precision_casts": key[1]})
    if compiled is fn:
        return fn(*args)
    try:
        return compiled(*args)
    except Exception as err:  # noqa: BLE001 - an Inductor failure must not stop training; eager is correct
        warnings.warn(f"torch.compile of {fn.__name__} failed ({type(err).__name__}: {str(err)[:200]}); "
                      f"running it eagerly", stacklevel=3)
        _compiled[key] = fn
        return fn(*args)


@fused
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32, cast back to x's dtype, then scaled: weight * (x / rms(x)) (x [..., D]).

    On CUDA (with ``NORM_FP64``) the mean square and its reciprocal square root are computed in fp64 and rounded
    once to fp32: every square of an fp32 is exact in fp64 and D <= 2^20 terms sum with a relative error below
    2^-33, so the fp32 scale no longer depends on the order of the reduction. Eager CUDA kernels, Inductor's
    Triton reductions of the learner's compiled chains and the sampler's compiled decode step (each with its own
    block sizes and summation tree) then give the same fp32 scale, bit for bit, instead of differing in the last
    bit for some rows (issue 16: sampler / learner log-prob agreement). The CPU keeps the fp32 reduction."""
    xf = x.float()
    if NORM_FP64 and xf.is_cuda:
        scale = torch.rsqrt(xf.double().pow(2).mean(-1, keepdim=True) + eps).float()
    else:
        scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    xf = xf * scale
    return weight * xf.to(x.dtype)


@fused
def rms_norm_and_cast(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x), rms_norm(x).to(dtype)) written in one pass: the norm's output for the residual stream and
    the low-precision copy the next matrix products read under autocast (the same values autocast's own cast
    gives, made once instead of once per product, and its gradients summed before the cast back)."""
    h = rms_norm.__wrapped__(x, weight, eps)
    return h, h.to(dtype)


@fused
def gated_rms_norm(gate: torch.Tensor, o: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """sigmoid(gate) * RMSNorm(o.to(dtype)): the lightning layer's output gate, cast to ``out_dtype`` if given
    (the dtype the output projection reads under autocast: the cast autocast would make, inside the chain, so
    neither it nor its gradient's cast back is a pass of its own; the same values either way)."""
    out = torch.sigmoid(gate) * rms_norm.__wrapped__(o.to(dtype), weight, eps)
    return out if out_dtype is None else out.to(out_dtype)


@fused
def silu_split(x: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """silu(x) split along the last dim into parts of ``size`` (the lightning layer's q, k, v from its fused
    projection [B, T, H, 3 D]). Compiled, each part is written contiguous in the pass that applies silu (the
    attention kernel reads contiguous tensors), and the backward writes the projection's gradient in one pass;
    eager (CPU), the parts are views of silu(x), as before."""
    parts = F.silu(x).split(size, dim=-1)
    if torch.compiler.is_compiling():
        return tuple(p.contiguous() for p in parts)
    return parts


@fused
def residual(x: torch.Tensor, y: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """alpha x + beta y (the DeepNorm residual)."""
    return alpha * x + beta * y


@fused
def swiglu(h13: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for h13 = [gate | up] along the last dim."""
    gate, up = h13.chunk(2, dim=-1)
    return F.silu(gate) * up


@fused
def weighted_sum(y: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sum_j weights[n, j] y[n, j] in ``dtype`` (y [N, k, H], weights [N, k]): the MoE combine."""
    return (y.to(dtype) * weights.to(dtype)[..., None]).sum(1)


@fused
def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] for x [N, H] and index [M] in [0, N], rows whose index is N zero: the MoE dispatch's
    ``cat([x, 0]).index_select(0, index)`` in one pass (no copy of x with a zero row appended)."""
    n = x.shape[0]
    rows = x[index.clamp(max=n - 1)]
    return torch.where((index < n)[:, None], rows, torch.zeros((), dtype=x.dtype, device=x.device))


@fused
def sum_rows(grad: torch.Tensor, position: torch.Tensor, k: int) -> torch.Tensor:
    """sum_j grad[position[n k + j]] for grad [M, H], position [N k]: the MoE dispatch's backward (each token's
    k row gradients gathered and summed in one pass, as ``index_select`` then ``sum(1)``)."""
    return grad[position].view(-1, k, grad.shape[1]).sum(1)


@fused
def combine_rows(ys: torch.Tensor, position: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """fp32 out[n] = sum_j weights[n, j] ys[position[n k + j]] (ys [M, H], weights [N, k] fp32): the MoE
    combine, ``weighted_sum(ys[position].view(N, k, H), weights, float32)`` without the gathered copy."""
    k = weights.shape[1]
    return weighted_sum.__wrapped__(ys[position].view(-1, k, ys.shape[1]), weights, torch.float32)


@fused
def combine_rows_backward(grad: torch.Tensor, ys: torch.Tensor, position: torch.Tensor, weights: torch.Tensor,
                          assignment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``combine_rows`` for grad [N, H] fp32: (d ys [M, H] in ys' dtype, d weights [N, k] fp32).
    ``assignment`` [M]: the assignment n k + j whose product row m is, -1 for padding rows (zero gradient).
    As eager autograd forms them: d ys[m] = (grad[n] weights[n, j]) cast to ys' dtype; d weights[n, j] =
    sum_h grad[n, h] ys[position[n k + j], h] (fp32)."""
    k = weights.shape[1]
    valid = assignment >= 0
    a = assignment.clamp(min=0)
    d_rows = grad[a // k] * weights.flatten()[a][:, None]
    d_ys = torch.where(valid[:, None], d_rows, torch.zeros((), dtype=grad.dtype, device=grad.device)).to(ys.dtype)
    y = ys[position].view(-1, k, ys.shape[1]).float()
    return d_ys, (grad[:, None, :] * y).sum(-1)


@fused
def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """NeoX RoPE's rotation of x [B, T, H, D]'s first ``rotary_dim`` channels in fp32 (cos, sin [B, T, 1,
    rotary_dim] fp32), cast back to x's dtype; the rest pass through (``layers.rotary`` computes cos and sin)."""
    rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat(((rot * cos + rotated * sin).to(x.dtype), rest), dim=-1)
