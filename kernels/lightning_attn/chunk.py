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
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Chunk length BT (64 or 128 tokens) and state-slice widths BK/BV are tuned per shape (configs below).
LOG2E = 1.4426950408889634


FEW_PROGRAMS = 264  # 2 per multiprocessor on an H100/H200: below this, narrower state slices are tried


def _prune_slices(configs, nargs, **kwargs):
    """Keep the state-slice widths that fit K and V. Slices narrower than the widest fitting one (64 or
    less) are kept only when the grid would otherwise have few programs (one long sequence, few heads):
    more programs per head then pay for re-reading q, k (through L2) and recomputing q k^T."""
    K, V, NB = (kwargs.get(n, nargs.get(n)) for n in ("K", "V", "NB"))
    hc = kwargs.get("HC", nargs.get("HC")) if kwargs.get("STORE_H", nargs.get("STORE_H")) else None
    few = NB * max(1, V // 64) < FEW_PROGRAMS
    kept = []
    for c in configs:
        bk, bv = c.kwargs.get("BK", min(64, K)), c.kwargs["BV"]
        if bk > K or bv > V or (hc is not None and c.kwargs["BT"] > hc):
            continue
        if (bk < min(64, K) or bv < min(64, V)) and not few:
            continue
        kept.append(c)
    return kept


def _launch(kernel, grid, *args, **kwargs):
    """Launch an autotuned kernel. Its first valid config runs instead of tuning under
    LIGHTSWE_LIGHTNING_AUTOTUNE=0 (tests: fewer compiles) and TRITON_INTERPRET=1 (CPU checks)."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if interpret or os.environ.get("LIGHTSWE_LIGHTNING_AUTOTUNE", "1") == "0":
        configs = kernel.configs
        if kernel.early_config_prune:
            configs = kernel.early_config_prune(configs, {}, **kwargs)
        config = configs[0]
        meta = {**kwargs, **config.kwargs}
        grid = grid(meta) if callable(grid) else grid
        if not interpret:
            meta.update(num_warps=config.num_warps, num_stages=config.num_stages)
        return kernel.fn[grid](*args, **meta)
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
def _decay_mask(b, BT: tl.constexpr):
    """M [BT, BT]: lambda^(i-j) for i >= j, else 0 (b = log2 lambda)."""
    o_t = tl.arange(0, BT)
    diff = (o_t[:, None] - o_t[None, :]).to(tl.float32)
    return tl.where(o_t[:, None] >= o_t[None, :], tl.exp2(b * tl.maximum(diff, 0.0)), 0.0)


@triton.jit
def _q_decay(b, BT: tl.constexpr):
    """lambda^(i+1) [BT]."""
    return tl.exp2(b * (tl.arange(0, BT) + 1).to(tl.float32))


@triton.jit
def _k_decay(b, L, BT: tl.constexpr):
    """lambda^(L-1-j) for j < L, 0 for the padding rows of a short chunk."""
    o_t = tl.arange(0, BT)
    return tl.where(o_t < L, tl.exp2(b * tl.maximum(L - 1 - o_t, 0).to(tl.float32)), 0.0)


@triton.jit
def _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN: tl.constexpr):
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        T = (eos - bos).to(tl.int32)
    else:
        bos = i_n.to(tl.int64) * T
    return bos, T


@triton.jit
def _chunk_base(chunk_offsets, i_n, T, HC: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Index of sequence i_n's first HC-token chunk among all sequences' chunks."""
    if IS_VARLEN:
        c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        c0 = i_n.to(tl.int64) * tl.cdiv(T, HC)
    return c0


@triton.autotune(
    configs=[
        triton.Config({"BT": 64, "BV": 64}, num_warps=4, num_stages=2),
        triton.Config({"BT": 64, "BV": 64}, num_warps=8, num_stages=2),
        triton.Config({"BT": 64, "BV": 128}, num_warps=8, num_stages=2),
        triton.Config({"BT": 128, "BV": 64}, num_warps=8, num_stages=2),
        triton.Config({"BT": 128, "BV": 128}, num_warps=8, num_stages=2),
        triton.Config({"BT": 64, "BV": 32}, num_warps=4, num_stages=2),
        triton.Config({"BT": 64, "BV": 32}, num_warps=4, num_stages=3),
        triton.Config({"BT": 128, "BV": 32}, num_warps=8, num_stages=2),
        triton.Config({"BT": 64, "BV": 16}, num_warps=4, num_stages=2),
        triton.Config({"BT": 64, "BV": 64}, num_warps=8, num_stages=3),
        triton.Config({"BT": 64, "BV": 32}, num_warps=4, num_stages=4),
    ],
    key=["H", "K", "V", "NB", "IS_VARLEN", "STORE_H", "HC"],
    prune_configs_by={"early_config_prune": _prune_slices},
)
@triton.jit
def _fwd_kernel(q, k, v, o, slope, h0, ht, h, cu_seqlens, chunk_offsets, T, NB,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                USE_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_H: tl.constexpr,
                IS_VARLEN: tl.constexpr, HC: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    if STORE_H:
        c0 = _chunk_base(chunk_offsets, i_n, T, HC, IS_VARLEN)
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
    for i_t in range(tl.cdiv(T, BT)):
        p_q = tl.make_block_ptr(q, (T, K), (H * K, 1), (i_t * BT, 0), (BT, K), (1, 0))
        p_k = tl.make_block_ptr(k, (T, K), (H * K, 1), (i_t * BT, 0), (BT, K), (1, 0))
        p_v = tl.make_block_ptr(v, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_o = tl.make_block_ptr(o, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0,), padding_option="zero")
        b_k = tl.load(p_k, boundary_check=(0,), padding_option="zero")
        b_v = tl.load(p_v, boundary_check=(0,), padding_option="zero")
        b_s = state.to(b_q.dtype)
        if STORE_H:  # noqa: SIM102 (STORE_H is a compile-time constant, the inner test a run-time one)
            if (i_t * BT) % HC == 0:
                p_h = tl.make_block_ptr(h + ((c0 + i_t * BT // HC) * H + i_h).to(tl.int64) * K * V, (K, V),
                                        (V, 1), (0, i_v * BV), (K, BV), (1, 0))
                tl.store(p_h, b_s.to(p_h.dtype.element_ty))
        b_o = tl.dot((b_q * q_decay[:, None]).to(b_q.dtype), b_s)
        a = tl.dot(b_q, tl.trans(b_k)) * m
        b_o = tl.dot(a.to(b_v.dtype), b_v, acc=b_o)
        tl.store(p_o, b_o.to(p_o.dtype.element_ty), boundary_check=(0,))
        L = tl.minimum(T - i_t * BT, BT)
        b_kd = (b_k * _k_decay(b, L, BT)[:, None]).to(b_k.dtype)
        state = tl.dot(tl.trans(b_kd), b_v, acc=state * tl.exp2(b * L.to(tl.float32)))
    if STORE_HT:
        tl.store(ht + p_state, state)


@triton.jit
def _bwd_dq(q, k, v, do, dq, h0, i_nh, i_k, bos, T, b,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
            USE_H0: tl.constexpr):
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
    for i_t in range(tl.cdiv(T, BT)):
        p_k = tl.make_block_ptr(k, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_v = tl.make_block_ptr(v, (T, V), (H * V, 1), (i_t * BT, 0), (BT, V), (1, 0))
        p_do = tl.make_block_ptr(do, (T, V), (H * V, 1), (i_t * BT, 0), (BT, V), (1, 0))
        p_dq = tl.make_block_ptr(dq, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_k = tl.load(p_k, boundary_check=(0,), padding_option="zero")
        b_v = tl.load(p_v, boundary_check=(0,), padding_option="zero")
        b_do = tl.load(p_do, boundary_check=(0,), padding_option="zero")
        b_dq = tl.dot((b_do * q_decay[:, None]).to(b_do.dtype), tl.trans(state.to(b_do.dtype)))
        a = tl.dot(b_do, tl.trans(b_v)) * m
        b_dq = tl.dot(a.to(b_k.dtype), b_k, acc=b_dq)
        tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), boundary_check=(0,))
        L = tl.minimum(T - i_t * BT, BT)
        b_kd = (b_k * _k_decay(b, L, BT)[:, None]).to(b_k.dtype)
        state = tl.dot(tl.trans(b_kd), b_v, acc=state * tl.exp2(b * L.to(tl.float32)))


@triton.jit
def _bwd_dk(q, v, do, dk, dht, dh0, i_nh, i_k, bos, T, b,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
            USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr):
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
    NT = tl.cdiv(T, BT)
    for i in range(NT):
        i_t = NT - 1 - i
        p_q = tl.make_block_ptr(q, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_v = tl.make_block_ptr(v, (T, V), (H * V, 1), (i_t * BT, 0), (BT, V), (1, 0))
        p_do = tl.make_block_ptr(do, (T, V), (H * V, 1), (i_t * BT, 0), (BT, V), (1, 0))
        p_dk = tl.make_block_ptr(dk, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0,), padding_option="zero")
        b_v = tl.load(p_v, boundary_check=(0,), padding_option="zero")
        b_do = tl.load(p_do, boundary_check=(0,), padding_option="zero")
        L = tl.minimum(T - i_t * BT, BT)
        b_vd = (b_v * _k_decay(b, L, BT)[:, None]).to(b_v.dtype)
        b_dk = tl.dot(b_vd, tl.trans(dstate.to(b_v.dtype)))
        a = tl.dot(b_do, tl.trans(b_v)) * m
        b_dk = tl.dot(tl.trans(a.to(b_q.dtype)), b_q, acc=b_dk)
        tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), boundary_check=(0,))
        b_qd = (b_q * q_decay[:, None]).to(b_q.dtype)
        dstate = tl.dot(tl.trans(b_qd), b_do, acc=dstate * tl.exp2(b * L.to(tl.float32)))
    if STORE_DH0:
        tl.store(dh0 + p_state, dstate)


@triton.jit
def _bwd_dv(q, k, do, dv, dht, i_nh, i_v, bos, T, b,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
            USE_DHT: tl.constexpr):
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
    NT = tl.cdiv(T, BT)
    for i in range(NT):
        i_t = NT - 1 - i
        p_q = tl.make_block_ptr(q, (T, K), (H * K, 1), (i_t * BT, 0), (BT, K), (1, 0))
        p_k = tl.make_block_ptr(k, (T, K), (H * K, 1), (i_t * BT, 0), (BT, K), (1, 0))
        p_do = tl.make_block_ptr(do, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_dv = tl.make_block_ptr(dv, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0,), padding_option="zero")
        b_k = tl.load(p_k, boundary_check=(0,), padding_option="zero")
        b_do = tl.load(p_do, boundary_check=(0,), padding_option="zero")
        L = tl.minimum(T - i_t * BT, BT)
        b_kd = (b_k * _k_decay(b, L, BT)[:, None]).to(b_k.dtype)
        b_dv = tl.dot(b_kd, dstate.to(b_k.dtype))
        a = tl.dot(b_q, tl.trans(b_k)) * m
        b_dv = tl.dot(tl.trans(a.to(b_do.dtype)), b_do, acc=b_dv)
        tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), boundary_check=(0,))
        b_qd = (b_q * q_decay[:, None]).to(b_q.dtype)
        dstate = tl.dot(tl.trans(b_qd), b_do, acc=dstate * tl.exp2(b * L.to(tl.float32)))


@triton.autotune(
    configs=[
        triton.Config({"BT": 64, "BK": 64, "BV": 64}, num_warps=4, num_stages=2),
        triton.Config({"BT": 64, "BK": 64, "BV": 64}, num_warps=8, num_stages=2),
        triton.Config({"BT": 128, "BK": 32, "BV": 32}, num_warps=8, num_stages=2),
        triton.Config({"BT": 128, "BK": 64, "BV": 64}, num_warps=8, num_stages=2),
        triton.Config({"BT": 64, "BK": 32, "BV": 32}, num_warps=4, num_stages=2),
        triton.Config({"BT": 64, "BK": 32, "BV": 64}, num_warps=4, num_stages=2),
        triton.Config({"BT": 64, "BK": 16, "BV": 16}, num_warps=4, num_stages=2),
        triton.Config({"BT": 64, "BK": 64, "BV": 64}, num_warps=8, num_stages=3),
    ],
    key=["H", "K", "V", "NB", "IS_VARLEN"],
    prune_configs_by={"early_config_prune": _prune_slices},
)
@triton.jit
def _bwd_kernel(q, k, v, do, dq, dk, dv, slope, h0, dht, dh0, cu_seqlens, T, NB,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr,
                STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Grid (2 * K/BK + V/BV, N * H): program kinds dq | dk | dv side by side, so that the programs of
    one head run together and share their loads of q, k, v, dO through L2."""
    i_p, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    b = -tl.load(slope + i_h).to(tl.float32) * 1.4426950408889634
    NK: tl.constexpr = K // BK
    if i_p < NK:
        _bwd_dq(q, k, v, do, dq, h0, i_nh, i_p, bos, T, b, H, K, V, BT, BK, USE_H0)
    elif i_p < 2 * NK:
        _bwd_dk(q, v, do, dk, dht, dh0, i_nh, i_p - NK, bos, T, b, H, K, V, BT, BK, USE_DHT, STORE_DH0)
    else:
        _bwd_dv(q, k, do, dv, dht, i_nh, i_p - 2 * NK, bos, T, b, H, K, V, BT, BV, USE_DHT)


# ---- chunk-parallel backward: states saved by the forward every HC tokens, dS by one reverse pass ----
HC = 128  # tokens per saved state (h) and per backward chunk (64 or 128)


def _prune_bwd(configs, nargs, **kwargs):
    """Clip the slice widths BK/BV to K and V (small head dims), dropping the duplicates this makes."""
    K, V = (kwargs.get(n, nargs.get(n)) for n in ("K", "V"))
    kept, seen = [], set()
    for c in configs:
        meta = {n: min(w, K if n == "BK" else V) for n, w in c.kwargs.items()}
        key = (tuple(sorted(meta.items())), c.num_warps, c.num_stages)
        if key not in seen:
            seen.add(key)
            kept.append(triton.Config(meta, num_warps=c.num_warps, num_stages=c.num_stages))
    return kept


@triton.autotune(
    configs=[
        triton.Config({"BV": 64}, num_warps=4, num_stages=2),
        triton.Config({"BV": 64}, num_warps=8, num_stages=2),
        triton.Config({"BV": 128}, num_warps=8, num_stages=2),
        triton.Config({"BV": 32}, num_warps=4, num_stages=2),
        triton.Config({"BV": 64}, num_warps=4, num_stages=3),
        triton.Config({"BV": 32}, num_warps=4, num_stages=3),
    ],
    key=["H", "K", "V", "NB", "IS_VARLEN"],
    prune_configs_by={"early_config_prune": _prune_bwd},
)
@triton.jit
def _bwd_dh_kernel(q, do, dh, slope, dht, dh0, cu_seqlens, chunk_offsets, T, NB,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                   USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Reverse sweep over chunks of BT (= HC) tokens: dh[c] = dL/dS at the end of chunk c, then
    dS <- lambda^L dS + (q * lambda^(i+1))^T dO. Grid (V / BV, N * H)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    c0 = _chunk_base(chunk_offsets, i_n, T, BT, IS_VARLEN)
    b = -tl.load(slope + i_h).to(tl.float32) * 1.4426950408889634
    q_decay = tl.exp2(b * (tl.arange(0, BT) + 1).to(tl.float32))
    o_k = tl.arange(0, K)
    o_v = i_v * BV + tl.arange(0, BV)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_DHT:
        dstate = tl.load(dht + p_state).to(tl.float32)
    else:
        dstate = tl.zeros([K, BV], dtype=tl.float32)
    q += (bos * H + i_h) * K
    do += (bos * H + i_h) * V
    NT = tl.cdiv(T, BT)
    for i in range(NT):
        i_t = NT - 1 - i
        p_dh = tl.make_block_ptr(dh + ((c0 + i_t) * H + i_h) * K * V, (K, V), (V, 1), (0, i_v * BV), (K, BV),
                                 (1, 0))
        tl.store(p_dh, dstate.to(p_dh.dtype.element_ty))
        p_q = tl.make_block_ptr(q, (K, T), (1, H * K), (0, i_t * BT), (K, BT), (0, 1))
        p_do = tl.make_block_ptr(do, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(1,), padding_option="zero")
        b_do = tl.load(p_do, boundary_check=(0,), padding_option="zero")
        L = tl.minimum(T - i_t * BT, BT)
        b_qd = (b_q * q_decay[None, :]).to(b_q.dtype)
        dstate = tl.dot(b_qd, b_do, acc=dstate * tl.exp2(b * L.to(tl.float32)))
    if STORE_DH0:
        tl.store(dh0 + p_state, dstate)


@triton.jit
def _slot_chunk(chunk_indices, i_c, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Slot i_c of the chunk list -> (sequence, chunk within it); sequence -1 for an unused slot."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_c * 2)
        i_t = tl.load(chunk_indices + i_c * 2 + 1)
    else:
        NT = tl.cdiv(T, BT)
        i_n, i_t = i_c // NT, i_c % NT
    return i_n, i_t


@triton.autotune(
    configs=[
        triton.Config({"BK": 64, "BV": 64, "G": 8}, num_warps=8, num_stages=2),
        triton.Config({"BK": 64, "BV": 64, "G": 8}, num_warps=4, num_stages=2),
        triton.Config({"BK": 128, "BV": 128, "G": 8}, num_warps=8, num_stages=2),
        triton.Config({"BK": 64, "BV": 64, "G": 16}, num_warps=8, num_stages=3),
        triton.Config({"BK": 32, "BV": 32, "G": 8}, num_warps=4, num_stages=2),
        triton.Config({"BK": 64, "BV": 64, "G": 4}, num_warps=4, num_stages=2),
        triton.Config({"BK": 64, "BV": 128, "G": 8}, num_warps=8, num_stages=2),
    ],
    key=["H", "K", "V", "NC", "BT", "IS_VARLEN"],
    prune_configs_by={"early_config_prune": _prune_bwd},
)
@triton.jit
def _bwd_dqkv_kernel(q, k, v, do, h, dh, dq, dk, dv, slope, cu_seqlens, chunk_indices, T, NC,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, G: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Per chunk of BT (= HC) tokens, independently of the others (no state carried):
        dq = (dO v^T * M) k + lambda^(i+1) dO h^T          (h: state before the chunk)
        dk = (dO v^T * M)^T q + lambda^(L-1-j) v dh^T      (dh: dL/dS at the chunk's end)
        dv = (q k^T * M)^T dO + lambda^(L-1-j) k dh
    Grid (K / BK + V / BV, H, NC / G): each program walks G consecutive chunk slots (loads of the next
    chunk in flight while it computes one); the first K / BK programs write dq, dk slices, the others dv."""
    i_p, i_h, i_g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = -tl.load(slope + i_h).to(tl.float32) * 1.4426950408889634
    NK: tl.constexpr = K // BK
    c_end = tl.minimum(i_g * G + G, NC)
    if i_p < NK:
        i_k = i_p
        for i_c in range(i_g * G, c_end):
            i_n, i_t = _slot_chunk(chunk_indices, i_c, T, BT, IS_VARLEN)
            bos, T_n = _seq_bounds(cu_seqlens, tl.maximum(i_n, 0), T, IS_VARLEN)
            T_n = tl.where(i_n < 0, 0, T_n)  # unused slot: every row out of bounds, nothing stored
            L = tl.minimum(T_n - i_t * BT, BT)
            p_hb = (i_c * H + i_h).to(tl.int64) * K * V
            o_qk = (bos * H + i_h) * K
            o_v = (bos * H + i_h) * V
            p_v = tl.make_block_ptr(v + o_v, (T_n, V), (H * V, 1), (i_t * BT, 0), (BT, V), (1, 0))
            p_do = tl.make_block_ptr(do + o_v, (T_n, V), (H * V, 1), (i_t * BT, 0), (BT, V), (1, 0))
            p_q = tl.make_block_ptr(q + o_qk, (T_n, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
            p_k = tl.make_block_ptr(k + o_qk, (T_n, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
            p_ht = tl.make_block_ptr(h + p_hb, (V, K), (1, V), (0, i_k * BK), (V, BK), (0, 1))
            p_dht = tl.make_block_ptr(dh + p_hb, (V, K), (1, V), (0, i_k * BK), (V, BK), (0, 1))
            b_v = tl.load(p_v, boundary_check=(0,), padding_option="zero")
            b_do = tl.load(p_do, boundary_check=(0,), padding_option="zero")
            b_q = tl.load(p_q, boundary_check=(0,), padding_option="zero")
            b_k = tl.load(p_k, boundary_check=(0,), padding_option="zero")
            b_dq = tl.dot((b_do * _q_decay(b, BT)[:, None]).to(b_do.dtype), tl.load(p_ht))
            b_dk = tl.dot((b_v * _k_decay(b, L, BT)[:, None]).to(b_v.dtype), tl.load(p_dht))
            da = (tl.dot(b_do, tl.trans(b_v)) * _decay_mask(b, BT)).to(b_k.dtype)
            b_dq = tl.dot(da, b_k, acc=b_dq)
            b_dk = tl.dot(tl.trans(da), b_q, acc=b_dk)
            p_dq = tl.make_block_ptr(dq + o_qk, (T_n, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
            p_dk = tl.make_block_ptr(dk + o_qk, (T_n, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
            tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), boundary_check=(0,))
            tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), boundary_check=(0,))
    else:
        i_v = i_p - NK
        for i_c in range(i_g * G, c_end):
            i_n, i_t = _slot_chunk(chunk_indices, i_c, T, BT, IS_VARLEN)
            bos, T_n = _seq_bounds(cu_seqlens, tl.maximum(i_n, 0), T, IS_VARLEN)
            T_n = tl.where(i_n < 0, 0, T_n)
            L = tl.minimum(T_n - i_t * BT, BT)
            p_hb = (i_c * H + i_h).to(tl.int64) * K * V
            o_qk = (bos * H + i_h) * K
            o_v = (bos * H + i_h) * V
            p_q = tl.make_block_ptr(q + o_qk, (T_n, K), (H * K, 1), (i_t * BT, 0), (BT, K), (1, 0))
            p_k = tl.make_block_ptr(k + o_qk, (T_n, K), (H * K, 1), (i_t * BT, 0), (BT, K), (1, 0))
            p_do = tl.make_block_ptr(do + o_v, (T_n, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
            p_dh = tl.make_block_ptr(dh + p_hb, (K, V), (V, 1), (0, i_v * BV), (K, BV), (1, 0))
            b_q = tl.load(p_q, boundary_check=(0,), padding_option="zero")
            b_k = tl.load(p_k, boundary_check=(0,), padding_option="zero")
            b_do = tl.load(p_do, boundary_check=(0,), padding_option="zero")
            b_dv = tl.dot((b_k * _k_decay(b, L, BT)[:, None]).to(b_k.dtype), tl.load(p_dh))
            a = (tl.dot(b_q, tl.trans(b_k)) * _decay_mask(b, BT)).to(b_do.dtype)
            b_dv = tl.dot(tl.trans(a), b_do, acc=b_dv)
            p_dv = tl.make_block_ptr(dv + o_v, (T_n, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
            tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), boundary_check=(0,))


def _num_seqs(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1


def _chunk_layout(T: int, n_seqs: int, cu_seqlens: torch.Tensor | None, device: torch.device):
    """Chunks of HC tokens over all sequences, without a host sync.

    Returns (NC, chunk_offsets, chunk_indices): NC slots (for packed input an upper bound: T // HC + N,
    the real count being sum(ceil(len_n / HC))); chunk_offsets [N] int32, the first slot of each sequence;
    chunk_indices [NC, 2] int32, (sequence, chunk within it) per slot, (-1, -1) for unused slots.
    Plain batches (cu_seqlens None): NC = N * ceil(T / HC) and no tables.
    """
    if cu_seqlens is None:
        return n_seqs * triton.cdiv(T, HC), None, None
    counts = (cu_seqlens[1:] - cu_seqlens[:-1] + HC - 1) // HC
    ends = torch.cumsum(counts, 0)
    offsets = (ends - counts).to(torch.int32)
    n_slots = T // HC + n_seqs
    slots = torch.arange(n_slots, device=device, dtype=ends.dtype)
    seq = torch.searchsorted(ends, slots, right=True)
    valid = seq < n_seqs
    seq_c = seq.clamp(max=n_seqs - 1)
    within = slots - offsets[seq_c].to(slots.dtype)
    indices = torch.stack([torch.where(valid, seq_c, -1), torch.where(valid, within, -1)], 1).to(torch.int32)
    return n_slots, offsets.contiguous(), indices.contiguous()


def lightning_attn_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None, store_final_state: bool = True,
    store_states: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the forward kernel on contiguous [B, T, H, K/V] inputs.

    Returns (o, final state or None, h or None): with ``store_states``, h [NC, H, K, V] in q's dtype holds
    the state entering each chunk of HC tokens (slots as in _chunk_layout), for the backward.
    """
    _, T, H, K = q.shape
    V = v.shape[-1]
    N = _num_seqs(q, cu_seqlens)
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if store_final_state else None
    h, offsets = None, None
    if store_states:
        n_slots, offsets, _ = _chunk_layout(T, N, cu_seqlens, q.device)
        h = q.new_empty(n_slots, H, K, V)
    grid = lambda meta: (triton.cdiv(V, meta["BV"]), N * H)
    _launch(_fwd_kernel, grid, q, k, v, o, slope, initial_state, ht, h, cu_seqlens, offsets, T=T, NB=N * H,
            H=H, K=K, V=V, USE_H0=initial_state is not None, STORE_HT=store_final_state,
            STORE_H=store_states, IS_VARLEN=cu_seqlens is not None, HC=HC)
    return o, ht, h


def lightning_attn_bwd_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, h: torch.Tensor,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    do: torch.Tensor, dht: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward from the forward's saved chunk states h: a reverse pass writes dL/dS per chunk (dh, q's
    dtype), then one fully parallel launch writes dq, dk, dv. Returns (dq, dk, dv, d initial_state or None)."""
    _, T, H, K = q.shape
    V = v.shape[-1]
    N = _num_seqs(q, cu_seqlens)
    n_slots, offsets, indices = _chunk_layout(T, N, cu_seqlens, q.device)
    dh = torch.empty_like(h)
    dh0 = torch.empty_like(initial_state, dtype=torch.float32) if initial_state is not None else None
    varlen = cu_seqlens is not None
    grid = lambda meta: (triton.cdiv(V, meta["BV"]), N * H)
    _launch(_bwd_dh_kernel, grid, q, do, dh, slope, dht, dh0, cu_seqlens, offsets, T=T, NB=N * H, H=H,
            K=K, V=V, BT=HC, USE_DHT=dht is not None, STORE_DH0=dh0 is not None, IS_VARLEN=varlen)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    grid = lambda meta: (triton.cdiv(K, meta["BK"]) + triton.cdiv(V, meta["BV"]), H, triton.cdiv(n_slots, meta["G"]))
    _launch(_bwd_dqkv_kernel, grid, q, k, v, do, h, dh, dq, dk, dv, slope, cu_seqlens, indices, T=T,
            NC=n_slots, H=H, K=K, V=V, BT=HC, IS_VARLEN=varlen)
    return dq, dk, dv, dh0


def lightning_attn_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    do: torch.Tensor, dht: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward that recomputes the states (one launch, 6 sweeping programs per head).
    Returns (dq, dk, dv, d initial_state or None)."""
    _, T, H, K = q.shape
    V = v.shape[-1]
    N = _num_seqs(q, cu_seqlens)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dh0 = torch.empty_like(initial_state, dtype=torch.float32) if initial_state is not None else None
    grid = lambda meta: (2 * triton.cdiv(K, meta["BK"]) + triton.cdiv(V, meta["BV"]), N * H)
    _launch(_bwd_kernel, grid, q, k, v, do, dq, dk, dv, slope, initial_state, dht, dh0, cu_seqlens,
            T=T, NB=N * H, H=H, K=K, V=V, USE_H0=initial_state is not None,
            USE_DHT=dht is not None, STORE_DH0=dh0 is not None, IS_VARLEN=cu_seqlens is not None)
    return dq, dk, dv, dh0


def _backward_mode() -> str:
    mode = os.environ.get("LIGHTSWE_LIGHTNING_BWD", "chunk")
    if mode not in ("chunk", "recompute"):
        raise ValueError(f"LIGHTSWE_LIGHTNING_BWD must be 'chunk' or 'recompute', got {mode!r}")
    return mode


class LightningAttnFunction(torch.autograd.Function):
    """Autograd wrapper. Default backward ("chunk"): the forward also writes the state entering every
    chunk of HC tokens (h, q's dtype: N*T/HC*H*K*V elements), and the backward runs chunk-parallel from
    it. LIGHTSWE_LIGHTNING_BWD=recompute saves only q, k, v and recomputes the states instead."""

    @staticmethod
    def forward(ctx, q, k, v, slope, initial_state, cu_seqlens):
        needs_grad = any(x is not None and x.requires_grad for x in (q, k, v, initial_state))
        chunked = needs_grad and _backward_mode() == "chunk"
        o, ht, h = lightning_attn_fwd(q, k, v, slope, initial_state, cu_seqlens, store_states=chunked)
        ctx.save_for_backward(q, k, v, slope, initial_state, cu_seqlens, h)
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, slope, initial_state, cu_seqlens, h = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous().float()
        if h is not None:
            dq, dk, dv, dh0 = lightning_attn_bwd_chunked(q, k, v, slope, h, initial_state, cu_seqlens, do, dht)
        else:
            dq, dk, dv, dh0 = lightning_attn_bwd(q, k, v, slope, initial_state, cu_seqlens, do, dht)
        return dq, dk, dv, None, dh0, None


def chunk_lightning_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor,
    initial_state: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton lightning attention on checked, contiguous CUDA tensors (see api.lightning_attn for shapes)."""
    return LightningAttnFunction.apply(q, k, v, slope, initial_state, cu_seqlens)
