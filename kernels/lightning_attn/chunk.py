"""Triton prefill/training kernels for MiniMax lightning attention, and their autograd Function.

Scheme (one program per (sequence, head, slice of the state), looping over chunks of BT tokens):
  forward   S [K, BV] in fp32 registers; per chunk o = (q k^T * M) v + lambda^(i+1) q S, then
            S = lambda^L S + (k * lambda^(L-1-j))^T v. No per-chunk states go through memory.
  backward  one launch, three program kinds per (sequence, head):
              dq  (per BK rows of S, forward sweep):  dq = (dO v^T * M) k + lambda^(i+1) dO S^T
              dk  (per BK rows of dS, reverse sweep): dk = (dO v^T * M)^T q + lambda^(L-1-j) v dS^T
              dv  (per BV cols of dS, reverse sweep): dv = (q k^T * M)^T dO + lambda^(L-1-j) k dS
            with dS = lambda^L dS + (q * lambda^(i+1))^T dO; the dk programs also write d initial_state.
  M[i, j] = lambda^(i-j) for i >= j (0 above the diagonal), L = tokens in the chunk (the last may be short).
The state goes into the matrix products in the inputs' dtype (bf16/fp16; tf32 for fp32 inputs); every
product accumulates in fp32. Importing this module needs Triton; api.py imports it only on CUDA.

Launch variants (autotuned, FWD_CONFIGS / BWD_CONFIGS; measurements in RESULTS.md):
  TMA        tiles move through tensor descriptors (Hopper's tensor memory accelerator; rows past a sequence's
             end load as zeros and are not stored), sm_90+ only.
  DECAY_OUT  the per-row decays are applied where they cost least: o = (q S) * lambda^(i+1) on the fp32
             product instead of round(q * lambda^(i+1)) S, and the state update scales the narrower of k and v
             (forward: v's BV columns); q, k then enter the tensor cores straight from shared memory.
             Same math, another rounding of the bf16 inputs than without it. Every config of the autotuned
             sets has it (and 64-token chunks), so all of them round alike: which one the autotuner's timing
             picks changes no bit of o, the final state or the gradients (GPU test), and decode.py's
             chunk-form step reproduces that one rounding. The configs without it stay in FWD_SWEEP /
             BWD_SWEEP (benchmark comparison only).
On Hopper the forward runs gluon_fwd.py's kernel instead (same math, same bits, its next chunk's loads issued
before the current chunk's products; 1.2-1.4x faster on the H200); LIGHTSWE_LIGHTNING_FWD=triton keeps the plain
autotuned one (other GPUs always run it).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from lightswe.errors import UserInputError

# Chunk length BT (64 or 128 tokens) and state-slice widths BK/BV are tuned per shape (configs below).
LOG2E = 1.4426950408889634


FEW_PROGRAMS = 264  # 2 per multiprocessor on an H100/H200: below this, narrower state slices are tried


def _prune_slices(configs, nargs, **kwargs):
    """Keep the state-slice widths that fit K and V. Slices narrower than the widest fitting one (64 or
    less) are kept only when the grid would otherwise have few programs (one long sequence, few heads):
    more programs per head then pay for re-reading q, k (through L2) and recomputing q k^T."""
    K, V, NB = (kwargs.get(n, nargs.get(n)) for n in ("K", "V", "NB"))
    few = NB * max(1, V // 64) < FEW_PROGRAMS
    kept = []
    for c in configs:
        if c.kwargs.get("TMA") and not _has_tma():
            continue
        if c.kwargs.get("GLUON") and (os.environ.get("TRITON_INTERPRET") == "1" or _gluon_kernel() is None
                                      or torch.cuda.get_device_capability()[0] != 9):
            continue
        bk, bv = c.kwargs.get("BK", min(64, K)), c.kwargs["BV"]
        if bk > K or bv > V:
            continue
        if (bk < min(64, K) or bv < min(64, V)) and not few and not c.kwargs.get("GLUON"):  # (sweep: both widths)
            continue
        kept.append(c)
    return kept


def _has_tma() -> bool:
    """Tensor-memory-accelerator loads (tensor descriptors) need compute capability 9.0+; the interpreter has them."""
    return os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.get_device_capability()[0] >= 9


def _launch(kernel, grid, *args, **kwargs):
    """Launch an autotuned kernel. Its first valid config runs instead of tuning under
    LIGHTSWE_LIGHTNING_AUTOTUNE=0 (tests: fewer compiles) and TRITON_INTERPRET=1 (CPU checks)."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if interpret or os.environ.get("LIGHTSWE_LIGHTNING_AUTOTUNE", "1") == "0":
        configs = kernel.configs
        if kernel.early_config_prune:
            configs = kernel.early_config_prune(configs, {}, **kwargs)
        for i, config in enumerate(configs):  # the next one when a config needs more shared memory than there is
            meta = {**kwargs, **config.kwargs}
            launch_grid = grid(meta) if callable(grid) else grid
            if not interpret:
                meta.update(num_warps=config.num_warps, num_stages=config.num_stages)
            try:
                return kernel.fn[launch_grid](*args, **meta)
            except triton.runtime.errors.OutOfResources:
                if i == len(configs) - 1:
                    raise
    return kernel[grid](*args, **kwargs)


@triton.jit
def _decay_masks(b, BT: tl.constexpr):
    """b = log2 of the per-step decay (negative). Returns M [BT, BT] and lambda^(i+1) [BT]."""
    o_t = tl.arange(0, BT)
    diff = (o_t[:, None] - o_t[None, :]).to(tl.float32)
    m = tl.where(o_t[:, None] >= o_t[None, :], tl.exp2(b * tl.maximum(diff, 0.0)), 0.0)
    q_decay = tl.exp2(b * (o_t + 1).to(tl.float32))
    return m, q_decay


@triton.jit
def _k_decay(b, L, BT: tl.constexpr):
    """lambda^(L-1-j) for j < L, 0 for the padding rows of a short chunk."""
    o_t = tl.arange(0, BT)
    return tl.where(o_t < L, tl.exp2(b * tl.maximum(L - 1 - o_t, 0).to(tl.float32)), 0.0)


@triton.jit
def _advance_state(state, b_k, b_v, b, L, BT: tl.constexpr, SCALE_V: tl.constexpr):
    """lambda^L S + (k * lambda^(L-1-j))^T v; with SCALE_V the decay scales v's rows instead of k's (k then goes
    into the product straight from shared memory, and v's tile is the narrower one when BV < K)."""
    decay = _k_decay(b, L, BT)[:, None]
    if SCALE_V:
        return tl.dot(tl.trans(b_k), (b_v * decay).to(b_v.dtype), acc=state * tl.exp2(b * L.to(tl.float32)))
    return tl.dot(tl.trans((b_k * decay).to(b_k.dtype)), b_v, acc=state * tl.exp2(b * L.to(tl.float32)))


@triton.jit
def _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN: tl.constexpr):
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        T = (eos - bos).to(tl.int32)
    else:
        bos = i_n.to(tl.int64) * T
    return bos, T


def _fwd_config(bt: int, bv: int, warps: int, stages: int, tma: bool = False, decay_out: bool = False):
    return triton.Config({"BT": bt, "BV": bv, "TMA": tma, "DECAY_OUT": decay_out}, num_warps=warps,
                         num_stages=stages)


# Autotuned set (H200 measurements in RESULTS.md). TMA = tensor-descriptor loads and stores (sm_90+; the
# pointer-load configs serve older GPUs, and compete on sm_90+). DECAY_OUT = q's decay applied to the fp32 product
# instead of to q before it (q then goes from shared memory straight into the tensor cores) and the state
# update's decay on v's narrower slice: 227 instead of 255 registers, 8-19% faster. Every autotuned config has it
# and BT = 64 (what decode.py's chunk-form step reproduces): the slices BV, warps and stages change no reduction
# (each tl.dot reduces over K or BT whatever the slice), so the autotuner's pick changes no result bit.
FWD_CONFIGS = [
    _fwd_config(64, 64, 4, 2, tma=True, decay_out=True),
    _fwd_config(64, 64, 4, 3, tma=True, decay_out=True),
    _fwd_config(64, 32, 4, 2, tma=True, decay_out=True),
    _fwd_config(64, 64, 4, 2, decay_out=True),
    _fwd_config(64, 32, 4, 2, decay_out=True),
    _fwd_config(64, 16, 4, 2, decay_out=True),
]
# Timed one by one by the benchmark's --prefill-sweep (the autotuned set first); the configs without DECAY_OUT
# (q rounded after its decay: other result bits) and with 128-token chunks are for the comparison only.
FWD_SWEEP = FWD_CONFIGS + [
    _fwd_config(64, 64, 4, 2, tma=True), _fwd_config(64, 64, 4, 3, tma=True), _fwd_config(64, 32, 4, 3, tma=True),
    _fwd_config(64, 64, 8, 2, tma=True), _fwd_config(64, 128, 8, 2, tma=True), _fwd_config(64, 64, 4, 2),
    _fwd_config(64, 64, 4, 3), _fwd_config(64, 128, 8, 2), _fwd_config(128, 64, 8, 2), _fwd_config(128, 32, 8, 2),
]


# The forward in Gluon (gluon_fwd.py: chunk i+1's loads issued before chunk i's products; same rounding as the
# configs above). Sweep entries, timed beside the plain configs by the benchmark's --prefill-sweep.
GLUON_SWEEP = [triton.Config({"BT": 64, "BV": 64, "GLUON": True}, num_warps=4),
               triton.Config({"BT": 64, "BV": 32, "GLUON": True}, num_warps=4)]
FWD_SWEEP = FWD_SWEEP + GLUON_SWEEP


@functools.cache
def _gluon_kernel():
    """gluon_fwd._fwd_gluon_kernel, or None before Triton 3.6 (the version it is written and tested against: Gluon
    is experimental and its API changed between releases)."""
    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 6):
        return None
    try:
        from lightswe.kernels.lightning_attn import gluon_fwd
    except ImportError:
        return None
    return gluon_fwd._fwd_gluon_kernel


def _gluon_bv(q: torch.Tensor, N: int, H: int, K: int, V: int) -> int | None:
    """The state-slice width the Gluon forward runs with for this call, or None where the plain kernel runs:
    Hopper (compute capability 9.x: warp-group MMA, TMA), bf16/fp16 inputs, K in (64, 128), V a multiple of 64,
    not under the interpreter, and LIGHTSWE_LIGHTNING_FWD not "triton" (values: auto (default) | triton).
    Always BV 64: on the H200 BV 32 was slower at every shape, B=1 T=64K included (RESULTS.md, session 8)."""
    choice = os.environ.get("LIGHTSWE_LIGHTNING_FWD", "auto")
    if choice not in ("auto", "triton"):
        raise UserInputError(f"LIGHTSWE_LIGHTNING_FWD must be 'auto' or 'triton', got {choice!r}; unset it for auto")
    if choice == "triton" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if not q.is_cuda or q.dtype not in (torch.bfloat16, torch.float16) or K not in (64, 128) or V % 64:
        return None
    if torch.cuda.get_device_capability(q.device)[0] != 9 or _gluon_kernel() is None:
        return None
    return 64


def _launch_gluon_fwd(bv: int, q, k, v, o, slope, h0, ht, cu_seqlens, seq_order, T: int, N: int, H: int, K: int,
                      V: int, store_final_state: bool) -> None:
    """One launch of the Gluon forward (grid V // bv x N * H, 4 warps); arguments as _fwd_kernel's."""
    _set_tma_allocator()
    _gluon_kernel()[(V // bv, N * H)](
        q, k, v, o, slope, h0, ht, cu_seqlens, seq_order, T, N * H, H=H, K=K, V=V, BT=64, BV=bv,
        USE_H0=h0 is not None, STORE_HT=store_final_state, IS_VARLEN=cu_seqlens is not None, num_warps=4)


def _set_tma_allocator() -> None:
    """Device-side TMA descriptors need a small global scratch buffer per program (Triton's allocator)."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device="cuda", dtype=torch.int8))


@triton.autotune(
    configs=FWD_CONFIGS,
    key=["H", "K", "V", "NB", "IS_VARLEN"],
    prune_configs_by={"early_config_prune": _prune_slices},
)
@triton.jit
def _fwd_kernel(q, k, v, o, slope, h0, ht, cu_seqlens, seq_order, T, NB,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                USE_H0: tl.constexpr, STORE_HT: tl.constexpr, IS_VARLEN: tl.constexpr,
                TMA: tl.constexpr = False, DECAY_OUT: tl.constexpr = False):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    if IS_VARLEN:  # packed sequences run longest first (seq_order), so that short ones fill the last wave
        i_n = tl.load(seq_order + i_n)
        i_nh = i_n * H + i_h
    bos, T = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    b = -tl.load(slope + i_h).to(tl.float32) * 1.4426950408889634
    m, q_decay = _decay_masks(b, BT)

    o_k = tl.arange(0, K)
    o_v = i_v * BV + tl.arange(0, BV)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        state = tl.load(h0 + p_state).to(tl.float32)
    else:
        state = tl.zeros([K, BV], dtype=tl.float32)

    q += (bos * H + i_h) * K
    k += (bos * H + i_h) * K
    v += (bos * H + i_h) * V
    o += (bos * H + i_h) * V
    T_d = tl.maximum(T, 1)  # an empty packed sequence: a valid descriptor that is never used
    if TMA:  # one descriptor per sequence and head: rows past T load as zeros and are not stored
        d_q = tl.make_tensor_descriptor(q, [T_d, K], [H * K, 1], [BT, K])
        d_k = tl.make_tensor_descriptor(k, [T_d, K], [H * K, 1], [BT, K])
        d_v = tl.make_tensor_descriptor(v, [T_d, V], [H * V, 1], [BT, BV])
        d_o = tl.make_tensor_descriptor(o, [T_d, V], [H * V, 1], [BT, BV])
    for i_t in range(tl.cdiv(T, BT)):
        if TMA:
            b_q = d_q.load([i_t * BT, 0])
            b_k = d_k.load([i_t * BT, 0])
            b_v = d_v.load([i_t * BT, i_v * BV])
        else:
            p_q = tl.make_block_ptr(q, (T, K), (H * K, 1), (i_t * BT, 0), (BT, K), (1, 0))
            p_k = tl.make_block_ptr(k, (T, K), (H * K, 1), (i_t * BT, 0), (BT, K), (1, 0))
            p_v = tl.make_block_ptr(v, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
            b_q = tl.load(p_q, boundary_check=(0,), padding_option="zero")
            b_k = tl.load(p_k, boundary_check=(0,), padding_option="zero")
            b_v = tl.load(p_v, boundary_check=(0,), padding_option="zero")
        L = tl.minimum(T - i_t * BT, BT)
        s_in = state.to(b_q.dtype)
        if DECAY_OUT:  # q straight from shared memory into the product, its decay applied to the fp32 result
            b_o = tl.dot(b_q, s_in) * q_decay[:, None]
        else:
            b_o = tl.dot((b_q * q_decay[:, None]).to(b_q.dtype), s_in)
        a = tl.dot(b_q, tl.trans(b_k)) * m
        b_o = tl.dot(a.to(b_v.dtype), b_v, acc=b_o)
        if TMA:
            d_o.store([i_t * BT, i_v * BV], b_o.to(d_o.dtype))
        else:
            p_o = tl.make_block_ptr(o, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
            tl.store(p_o, b_o.to(p_o.dtype.element_ty), boundary_check=(0,))
        state = _advance_state(state, b_k, b_v, b, L, BT, DECAY_OUT)
    if STORE_HT:
        tl.store(ht + p_state, state)


@triton.jit
def _bwd_dq(q, k, v, do, dq, h0, i_nh, i_k, bos, T, b,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
            USE_H0: tl.constexpr, TMA: tl.constexpr = False, DECAY_OUT: tl.constexpr = False):
    m, q_decay = _decay_masks(b, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = tl.arange(0, V)
    if USE_H0:
        state = tl.load(h0 + i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]).to(tl.float32)
    else:
        state = tl.zeros([BK, V], dtype=tl.float32)
    k += (bos * H + (i_nh % H)) * K
    v += (bos * H + (i_nh % H)) * V
    do += (bos * H + (i_nh % H)) * V
    dq += (bos * H + (i_nh % H)) * K
    T_d = tl.maximum(T, 1)
    if TMA:
        d_k = tl.make_tensor_descriptor(k, [T_d, K], [H * K, 1], [BT, BK])
        d_v = tl.make_tensor_descriptor(v, [T_d, V], [H * V, 1], [BT, V])
        d_do = tl.make_tensor_descriptor(do, [T_d, V], [H * V, 1], [BT, V])
        d_dq = tl.make_tensor_descriptor(dq, [T_d, K], [H * K, 1], [BT, BK])
    for i_t in range(tl.cdiv(T, BT)):
        if TMA:
            b_k = d_k.load([i_t * BT, i_k * BK])
            b_v = d_v.load([i_t * BT, 0])
            b_do = d_do.load([i_t * BT, 0])
        else:
            p_k = tl.make_block_ptr(k, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
            p_v = tl.make_block_ptr(v, (T, V), (H * V, 1), (i_t * BT, 0), (BT, V), (1, 0))
            p_do = tl.make_block_ptr(do, (T, V), (H * V, 1), (i_t * BT, 0), (BT, V), (1, 0))
            b_k = tl.load(p_k, boundary_check=(0,), padding_option="zero")
            b_v = tl.load(p_v, boundary_check=(0,), padding_option="zero")
            b_do = tl.load(p_do, boundary_check=(0,), padding_option="zero")
        if DECAY_OUT:  # dO straight from shared memory, its decay applied to the fp32 product
            b_dq = tl.dot(b_do, tl.trans(state.to(b_do.dtype))) * q_decay[:, None]
        else:
            b_dq = tl.dot((b_do * q_decay[:, None]).to(b_do.dtype), tl.trans(state.to(b_do.dtype)))
        a = tl.dot(b_do, tl.trans(b_v)) * m
        b_dq = tl.dot(a.to(b_k.dtype), b_k, acc=b_dq)
        if TMA:
            d_dq.store([i_t * BT, i_k * BK], b_dq.to(d_dq.dtype))
        else:
            p_dq = tl.make_block_ptr(dq, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
            tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), boundary_check=(0,))
        L = tl.minimum(T - i_t * BT, BT)
        b_kd = (b_k * _k_decay(b, L, BT)[:, None]).to(b_k.dtype)
        state = tl.dot(tl.trans(b_kd), b_v, acc=state * tl.exp2(b * L.to(tl.float32)))


@triton.jit
def _bwd_dk(q, v, do, dk, dht, dh0, i_nh, i_k, bos, T, b,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
            USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, TMA: tl.constexpr = False,
            DECAY_OUT: tl.constexpr = False):
    m, q_decay = _decay_masks(b, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = tl.arange(0, V)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_DHT:
        dstate = tl.load(dht + p_state).to(tl.float32)
    else:
        dstate = tl.zeros([BK, V], dtype=tl.float32)
    q += (bos * H + (i_nh % H)) * K
    v += (bos * H + (i_nh % H)) * V
    do += (bos * H + (i_nh % H)) * V
    dk += (bos * H + (i_nh % H)) * K
    T_d = tl.maximum(T, 1)
    if TMA:
        d_q = tl.make_tensor_descriptor(q, [T_d, K], [H * K, 1], [BT, BK])
        d_v = tl.make_tensor_descriptor(v, [T_d, V], [H * V, 1], [BT, V])
        d_do = tl.make_tensor_descriptor(do, [T_d, V], [H * V, 1], [BT, V])
        d_dk = tl.make_tensor_descriptor(dk, [T_d, K], [H * K, 1], [BT, BK])
    NT = tl.cdiv(T, BT)
    for i in range(NT):
        i_t = NT - 1 - i
        if TMA:
            b_q = d_q.load([i_t * BT, i_k * BK])
            b_v = d_v.load([i_t * BT, 0])
            b_do = d_do.load([i_t * BT, 0])
        else:
            p_q = tl.make_block_ptr(q, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
            p_v = tl.make_block_ptr(v, (T, V), (H * V, 1), (i_t * BT, 0), (BT, V), (1, 0))
            p_do = tl.make_block_ptr(do, (T, V), (H * V, 1), (i_t * BT, 0), (BT, V), (1, 0))
            b_q = tl.load(p_q, boundary_check=(0,), padding_option="zero")
            b_v = tl.load(p_v, boundary_check=(0,), padding_option="zero")
            b_do = tl.load(p_do, boundary_check=(0,), padding_option="zero")
        L = tl.minimum(T - i_t * BT, BT)
        if DECAY_OUT:
            b_dk = tl.dot(b_v, tl.trans(dstate.to(b_v.dtype))) * _k_decay(b, L, BT)[:, None]
        else:
            b_vd = (b_v * _k_decay(b, L, BT)[:, None]).to(b_v.dtype)
            b_dk = tl.dot(b_vd, tl.trans(dstate.to(b_v.dtype)))
        a = tl.dot(b_do, tl.trans(b_v)) * m
        b_dk = tl.dot(tl.trans(a.to(b_q.dtype)), b_q, acc=b_dk)
        if TMA:
            d_dk.store([i_t * BT, i_k * BK], b_dk.to(d_dk.dtype))
        else:
            p_dk = tl.make_block_ptr(dk, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
            tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), boundary_check=(0,))
        b_qd = (b_q * q_decay[:, None]).to(b_q.dtype)
        dstate = tl.dot(tl.trans(b_qd), b_do, acc=dstate * tl.exp2(b * L.to(tl.float32)))
    if STORE_DH0:
        tl.store(dh0 + p_state, dstate)


@triton.jit
def _bwd_dv(q, k, do, dv, dht, i_nh, i_v, bos, T, b,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
            USE_DHT: tl.constexpr, TMA: tl.constexpr = False, DECAY_OUT: tl.constexpr = False):
    m, q_decay = _decay_masks(b, BT)
    o_k = tl.arange(0, K)
    o_v = i_v * BV + tl.arange(0, BV)
    if USE_DHT:
        dstate = tl.load(dht + i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]).to(tl.float32)
    else:
        dstate = tl.zeros([K, BV], dtype=tl.float32)
    q += (bos * H + (i_nh % H)) * K
    k += (bos * H + (i_nh % H)) * K
    do += (bos * H + (i_nh % H)) * V
    dv += (bos * H + (i_nh % H)) * V
    T_d = tl.maximum(T, 1)
    if TMA:
        d_q = tl.make_tensor_descriptor(q, [T_d, K], [H * K, 1], [BT, K])
        d_k = tl.make_tensor_descriptor(k, [T_d, K], [H * K, 1], [BT, K])
        d_do = tl.make_tensor_descriptor(do, [T_d, V], [H * V, 1], [BT, BV])
        d_dv = tl.make_tensor_descriptor(dv, [T_d, V], [H * V, 1], [BT, BV])
    NT = tl.cdiv(T, BT)
    for i in range(NT):
        i_t = NT - 1 - i
        if TMA:
            b_q = d_q.load([i_t * BT, 0])
            b_k = d_k.load([i_t * BT, 0])
            b_do = d_do.load([i_t * BT, i_v * BV])
        else:
            p_q = tl.make_block_ptr(q, (T, K), (H * K, 1), (i_t * BT, 0), (BT, K), (1, 0))
            p_k = tl.make_block_ptr(k, (T, K), (H * K, 1), (i_t * BT, 0), (BT, K), (1, 0))
            p_do = tl.make_block_ptr(do, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
            b_q = tl.load(p_q, boundary_check=(0,), padding_option="zero")
            b_k = tl.load(p_k, boundary_check=(0,), padding_option="zero")
            b_do = tl.load(p_do, boundary_check=(0,), padding_option="zero")
        L = tl.minimum(T - i_t * BT, BT)
        if DECAY_OUT:
            b_dv = tl.dot(b_k, dstate.to(b_k.dtype)) * _k_decay(b, L, BT)[:, None]
        else:
            b_kd = (b_k * _k_decay(b, L, BT)[:, None]).to(b_k.dtype)
            b_dv = tl.dot(b_kd, dstate.to(b_k.dtype))
        a = tl.dot(b_q, tl.trans(b_k)) * m
        b_dv = tl.dot(tl.trans(a.to(b_do.dtype)), b_do, acc=b_dv)
        if TMA:
            d_dv.store([i_t * BT, i_v * BV], b_dv.to(d_dv.dtype))
        else:
            p_dv = tl.make_block_ptr(dv, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
            tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), boundary_check=(0,))
        if DECAY_OUT:  # the decay on dO's narrower slice, q straight from shared memory
            b_dod = (b_do * q_decay[:, None]).to(b_do.dtype)
            dstate = tl.dot(tl.trans(b_q), b_dod, acc=dstate * tl.exp2(b * L.to(tl.float32)))
        else:
            b_qd = (b_q * q_decay[:, None]).to(b_q.dtype)
            dstate = tl.dot(tl.trans(b_qd), b_do, acc=dstate * tl.exp2(b * L.to(tl.float32)))


def _bwd_config(bt: int, bk: int, bv: int, warps: int, stages: int, tma: bool = False, decay_out: bool = False):
    return triton.Config({"BT": bt, "BK": bk, "BV": bv, "TMA": tma, "DECAY_OUT": decay_out}, num_warps=warps,
                         num_stages=stages)


# The backward's DECAY_OUT applies each decay to the narrower operand or to the fp32 product. As in the forward,
# every autotuned config has it and BT = 64, so the autotuner's pick changes no gradient bit.
BWD_CONFIGS = [
    _bwd_config(64, 64, 64, 4, 2, tma=True, decay_out=True),
    _bwd_config(64, 64, 64, 4, 3, tma=True, decay_out=True),
    _bwd_config(64, 32, 64, 4, 2, tma=True, decay_out=True),
    _bwd_config(64, 64, 64, 4, 2, decay_out=True),
    _bwd_config(64, 32, 32, 4, 2, decay_out=True),
    _bwd_config(64, 16, 16, 4, 2, decay_out=True),
]
# Benchmark comparison only (--prefill-sweep): the configs without DECAY_OUT round otherwise.
BWD_SWEEP = BWD_CONFIGS + [
    _bwd_config(64, 64, 64, 4, 2, tma=True), _bwd_config(64, 64, 64, 4, 3, tma=True),
    _bwd_config(64, 32, 64, 4, 2, tma=True), _bwd_config(64, 32, 32, 4, 2, tma=True),
    _bwd_config(64, 64, 64, 8, 2, tma=True), _bwd_config(64, 64, 64, 4, 2), _bwd_config(64, 64, 64, 4, 3),
    _bwd_config(128, 64, 64, 8, 2),
]


@triton.autotune(
    configs=BWD_CONFIGS,
    key=["H", "K", "V", "NB", "IS_VARLEN"],
    prune_configs_by={"early_config_prune": _prune_slices},
)
@triton.jit
def _bwd_kernel(q, k, v, do, dq, dk, dv, slope, h0, dht, dh0, cu_seqlens, seq_order, T, NB,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr,
                STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr,
                TMA: tl.constexpr = False, DECAY_OUT: tl.constexpr = False):
    """Grid (2 * K/BK + V/BV, N * H): program kinds dq | dk | dv side by side, so that the programs of
    one head run together and share their loads of q, k, v, dO through L2."""
    i_p, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    if IS_VARLEN:  # longest packed sequences first, as in the forward
        i_n = tl.load(seq_order + i_n)
        i_nh = i_n * H + i_h
    bos, T = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    b = -tl.load(slope + i_h).to(tl.float32) * 1.4426950408889634
    NK: tl.constexpr = K // BK
    if i_p < NK:
        _bwd_dq(q, k, v, do, dq, h0, i_nh, i_p, bos, T, b, H, K, V, BT, BK, USE_H0, TMA, DECAY_OUT)
    elif i_p < 2 * NK:
        _bwd_dk(q, v, do, dk, dht, dh0, i_nh, i_p - NK, bos, T, b, H, K, V, BT, BK, USE_DHT, STORE_DH0,
                TMA, DECAY_OUT)
    else:
        _bwd_dv(q, k, do, dv, dht, i_nh, i_p - 2 * NK, bos, T, b, H, K, V, BT, BV, USE_DHT, TMA, DECAY_OUT)


def _num_seqs(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1


def _seq_order(cu_seqlens: torch.Tensor | None) -> torch.Tensor | None:
    """Packed sequences' indices, longest first (int32 [N], on the device, no host sync): the kernels' grids
    run the (sequence, head) programs in this order, so that the last wave holds the shortest sequences instead
    of whichever came last (longest-processing-time-first scheduling). None without packing."""
    if cu_seqlens is None:
        return None
    return torch.argsort(cu_seqlens[1:] - cu_seqlens[:-1], descending=True, stable=True).to(torch.int32)


def lightning_attn_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None, store_final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel on contiguous [B, T, H, K/V] inputs. Returns (o, final state or None)."""
    _, T, H, K = q.shape
    V = v.shape[-1]
    N = _num_seqs(q, cu_seqlens)
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if store_final_state else None
    bv = _gluon_bv(q, N, H, K, V)
    if bv is not None:
        _launch_gluon_fwd(bv, q, k, v, o, slope, initial_state, ht, cu_seqlens, _seq_order(cu_seqlens), T, N, H, K,
                          V, store_final_state)
        return o, ht
    grid = lambda meta: (triton.cdiv(V, meta["BV"]), N * H)
    _set_tma_allocator()
    _launch(_fwd_kernel, grid, q, k, v, o, slope, initial_state, ht, cu_seqlens, _seq_order(cu_seqlens), T=T,
            NB=N * H, H=H, K=K, V=V, USE_H0=initial_state is not None, STORE_HT=store_final_state,
            IS_VARLEN=cu_seqlens is not None)
    return o, ht


def lightning_attn_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    do: torch.Tensor, dht: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the backward kernel. Returns (dq, dk, dv, d initial_state or None)."""
    _, T, H, K = q.shape
    V = v.shape[-1]
    N = _num_seqs(q, cu_seqlens)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dh0 = torch.empty_like(initial_state, dtype=torch.float32) if initial_state is not None else None
    grid = lambda meta: (2 * triton.cdiv(K, meta["BK"]) + triton.cdiv(V, meta["BV"]), N * H)
    _set_tma_allocator()
    _launch(_bwd_kernel, grid, q, k, v, do, dq, dk, dv, slope, initial_state, dht, dh0, cu_seqlens,
            _seq_order(cu_seqlens), T=T, NB=N * H, H=H, K=K, V=V, USE_H0=initial_state is not None,
            USE_DHT=dht is not None, STORE_DH0=dh0 is not None, IS_VARLEN=cu_seqlens is not None)
    return dq, dk, dv, dh0


class LightningAttnFunction(torch.autograd.Function):
    """Autograd wrapper: saves only q, k, v (and the initial state); the backward recomputes the states."""

    @staticmethod
    def forward(ctx, q, k, v, slope, initial_state, cu_seqlens):
        o, ht = lightning_attn_fwd(q, k, v, slope, initial_state, cu_seqlens)
        ctx.save_for_backward(q, k, v, slope, initial_state, cu_seqlens)
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, slope, initial_state, cu_seqlens = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous().float()
        dq, dk, dv, dh0 = lightning_attn_bwd(q, k, v, slope, initial_state, cu_seqlens, do, dht)
        return dq, dk, dv, None, dh0, None


def chunk_lightning_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor,
    initial_state: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton lightning attention on checked, contiguous CUDA tensors (see api.lightning_attn for shapes)."""
    return LightningAttnFunction.apply(q, k, v, slope, initial_state, cu_seqlens)
