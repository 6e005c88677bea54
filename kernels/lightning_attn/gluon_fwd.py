"""The prefill forward in Triton's Gluon dialect (Hopper, sm_90+): chunk i+1's loads issued at the top of iteration i.

Same scheme and the same rounding as chunk._fwd_kernel's DECAY_OUT configs with 64-token chunks (one program per
(sequence, head, BV columns of the state), the state S [K, BV] fp32 in registers):
    o   = (q . round(S)) * lambda^(i+1) + round((q k^T) * M) . v
    S  <- S * lambda^L + k^T . round(v * lambda^(L-1-j))
(M[i, j] = lambda^(i-j) for i >= j, L = tokens in the chunk), with the same tensor-core instruction shapes
(wgmma m64 n=BV k16, the same operand order), so o and the final state are meant to be bit-identical to
chunk._fwd_kernel's (GPU test). What differs is the schedule, written out explicitly: q, k, v of chunk i+1 are
requested (TMA, into the second of two shared-memory buffers, one mbarrier each) before chunk i's products are
issued, so a program's own load latency hides behind its products. Triton's software pipeliner on the plain
kernel issues them after the last product of iteration i (RESULTS.md, "Where the forward waits").
Imported only where Gluon exists (Triton >= 3.5); chunk.py falls back to the plain kernel otherwise.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)


@gluon.jit
def _fwd_gluon_kernel(q, k, v, o, slope, h0, ht, cu_seqlens, seq_order, T, NB,
                      H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, BT: gl.constexpr, BV: gl.constexpr,
                      USE_H0: gl.constexpr, STORE_HT: gl.constexpr, IS_VARLEN: gl.constexpr,
                      num_warps: gl.constexpr):
    """Grid (V // BV, N * H); 4 warps (one warp group). Arguments as chunk._fwd_kernel's."""
    # wgmma accumulators: [K, BV] state, [BT, BV] output, [BT, BT] scores (instruction m64 n.. k16, 4 warps on M)
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BV, 16])
    A_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BT, 16])
    A_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=S_L, k_width=2)
    V_REG: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    DT: gl.constexpr = q.dtype.element_ty  # bf16 or fp16
    QK_S: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, K], DT)
    V_S: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BV], DT)
    ST_S: gl.constexpr = gl.NVMMASharedLayout.get_default_for([K, BV], DT)

    i_v = gl.program_id(0)
    i_nh = gl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    if IS_VARLEN:  # packed sequences longest first, as chunk._fwd_kernel
        i_n = gl.load(seq_order + i_n)
        i_nh = i_n * H + i_h
        bos = gl.load(cu_seqlens + i_n).to(gl.int64)
        eos = gl.load(cu_seqlens + i_n + 1).to(gl.int64)
        T = (eos - bos).to(gl.int32)
    else:
        bos = i_n.to(gl.int64) * T
    b = -gl.load(slope + i_h).to(gl.float32) * 1.4426950408889634

    # decay masks (the formulas of chunk._decay_masks / _k_decay, in the layouts their products use)
    r_a = gl.arange(0, BT, layout=gl.SliceLayout(1, A_L))
    c_a = gl.arange(0, BT, layout=gl.SliceLayout(0, A_L))
    diff = (r_a[:, None] - c_a[None, :]).to(gl.float32)
    m = gl.where(r_a[:, None] >= c_a[None, :], gl.exp2(b * gl.maximum(diff, 0.0)), 0.0)
    r_o = gl.arange(0, BT, layout=gl.SliceLayout(1, S_L))
    q_decay = gl.exp2(b * (r_o + 1).to(gl.float32))
    r_v = gl.arange(0, BT, layout=gl.SliceLayout(1, V_REG))

    o_k = gl.arange(0, K, layout=gl.SliceLayout(1, S_L))
    o_v = i_v * BV + gl.arange(0, BV, layout=gl.SliceLayout(0, S_L))
    p_state = i_nh.to(gl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        state = gl.load(h0 + p_state).to(gl.float32)
    else:
        state = gl.zeros([K, BV], gl.float32, layout=S_L)

    q += (bos * H + i_h) * K
    k += (bos * H + i_h) * K
    v += (bos * H + i_h) * V
    o += (bos * H + i_h) * V
    T_d = gl.maximum(T, 1)
    d_q = tma.make_tensor_descriptor(q, [T_d, K], [H * K, 1], [BT, K], QK_S)
    d_k = tma.make_tensor_descriptor(k, [T_d, K], [H * K, 1], [BT, K], QK_S)
    d_v = tma.make_tensor_descriptor(v, [T_d, V], [H * V, 1], [BT, BV], V_S)
    d_o = tma.make_tensor_descriptor(o, [T_d, V], [H * V, 1], [BT, BV], V_S)

    q_s = gl.allocate_shared_memory(DT, [2, BT, K], QK_S)
    k_s = gl.allocate_shared_memory(DT, [2, BT, K], QK_S)
    v_s = gl.allocate_shared_memory(DT, [2, BT, BV], V_S)
    st_s = gl.allocate_shared_memory(DT, [K, BV], ST_S)
    vd_s = gl.allocate_shared_memory(DT, [BT, BV], V_S)
    o_s = gl.allocate_shared_memory(DT, [BT, BV], V_S)
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bars.index(0), count=1)
    mbarrier.init(bars.index(1), count=1)
    NBYTES: gl.constexpr = 2 * (2 * BT * K + BT * BV)

    NT = (T + BT - 1) // BT
    has = NT > 0
    mbarrier.expect(bars.index(0), NBYTES, pred=has)
    tma.async_copy_global_to_shared(d_q, [0, 0], bars.index(0), q_s.index(0), pred=has)
    tma.async_copy_global_to_shared(d_k, [0, 0], bars.index(0), k_s.index(0), pred=has)
    tma.async_copy_global_to_shared(d_v, [0, i_v * BV], bars.index(0), v_s.index(0), pred=has)
    zero_o = gl.zeros([BT, BV], gl.float32, layout=S_L)
    zero_a = gl.zeros([BT, BT], gl.float32, layout=A_L)
    for i_t in range(NT):
        slot = i_t % 2
        nxt = i_t + 1 < NT
        # every warp is past iteration i-1 (its reads of the other buffers and of st_s, vd_s, o_s) before reuse
        gl.thread_barrier()
        # chunk i+1's loads first: they fly while chunk i's products run
        mbarrier.expect(bars.index(1 - slot), NBYTES, pred=nxt)
        tma.async_copy_global_to_shared(d_q, [(i_t + 1) * BT, 0], bars.index(1 - slot), q_s.index(1 - slot),
                                        pred=nxt)
        tma.async_copy_global_to_shared(d_k, [(i_t + 1) * BT, 0], bars.index(1 - slot), k_s.index(1 - slot),
                                        pred=nxt)
        tma.async_copy_global_to_shared(d_v, [(i_t + 1) * BT, i_v * BV], bars.index(1 - slot),
                                        v_s.index(1 - slot), pred=nxt)
        st_s.store(state.to(DT))
        fence_async_shared()
        gl.thread_barrier()
        mbarrier.wait(bars.index(slot), (i_t // 2) & 1)
        b_q = q_s.index(slot)
        b_k = k_s.index(slot)
        b_v = v_s.index(slot)
        acc_o = warpgroup_mma(b_q, st_s, zero_o, use_acc=False, is_async=True)
        acc_a = warpgroup_mma(b_q, b_k.permute((1, 0)), zero_a, use_acc=False, is_async=True)
        # the decayed value tile for the state update meanwhile (registers -> shared)
        L = gl.minimum(T - i_t * BT, BT)
        k_decay = gl.where(r_v < L, gl.exp2(b * gl.maximum(L - 1 - r_v, 0).to(gl.float32)), 0.0)
        vd = (b_v.load(V_REG).to(gl.float32) * k_decay[:, None]).to(DT)
        vd_s.store(vd)
        b_o, a = warpgroup_mma_wait(0, deps=(acc_o, acc_a))
        b_o = b_o * q_decay[:, None]
        a_op = gl.convert_layout((a * m).to(DT), A_OP)
        acc_o = warpgroup_mma(a_op, b_v, b_o, is_async=True)
        fence_async_shared()
        gl.thread_barrier()
        acc_s = warpgroup_mma(b_k.permute((1, 0)), vd_s, state * gl.exp2(b * L.to(gl.float32)), is_async=True)
        b_o, state = warpgroup_mma_wait(0, deps=(acc_o, acc_s))
        tma.store_wait(0)  # the previous chunk's output left o_s
        gl.thread_barrier()
        o_s.store(b_o.to(DT))
        fence_async_shared()
        gl.thread_barrier()
        tma.async_copy_shared_to_global(d_o, [i_t * BT, i_v * BV], o_s)
    tma.store_wait(0)
    mbarrier.invalidate(bars.index(0))
    mbarrier.invalidate(bars.index(1))
    if STORE_HT:
        gl.store(ht + p_state, state)
