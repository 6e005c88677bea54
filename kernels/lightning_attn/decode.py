"""Triton decode step: one token per sequence, fp32 state updated in place.

The step is bound by reading and writing the state ([B, H, K, V] fp32: 67 MB at B=8, H=64, 128x128), so
the state is split across many programs: one per (sequence*head, BV columns), each streaming a
[K, BV] slice once in and once out and reducing o = q S over K inside the program (no atomics). A state stored
V-major (``is_v_major``: each head's matrix transposed in memory, as the sampler engine keeps its exact-mode
states on CUDA) runs _decode_v_major_kernel, whose tile rows of K lie inside one warp: o's sum needs no shared
memory or barrier (87.7% of the bound at B=8 on an H200 against 84.0% for the K-major step; the same state bits).
Importing this module needs Triton; api.py imports it only on CUDA.

``lightning_attn_decode_chunk_form`` is the decode step in the chunk kernel's form (chunk.py's forward),
so that a sampler's log-probs round as the learner's full-sequence forward does. For a token at index i of
its chunk of BT tokens (chunks counted from the sequence's first token), with S0 the fp32 state at the chunk's
start and b = -slope * log2(e):
    o = (q . round(S0)) 2^(b (i+1))  +  sum_{j<=i} round((q . k_j) 2^(b (i-j))) v_j      (fp32 sums and products)
where round() is to the inputs' dtype, exactly where chunk.py's ``_fwd_kernel`` rounds with DECAY_OUT (its
tl.dot inputs; every autotuned config has DECAY_OUT, so this is the learner's rounding whichever it picks).
The chunk's keys and values wait in per-row buffers; when the chunk's last token arrives, the state advances
as the chunk kernel advances it: S0 = 2^(b BT) S0 + sum_j k_j^T round(v_j 2^(b (BT-1-j))) (the same tensor-core
product of rounded inputs with fp32 accumulation). Only round(S0) enters o, so a caller may keep it beside the
fp32 state (``rounded_state``, rewritten whenever the state advances): the 63 of 64 steps that do not complete a
chunk then read 2 bytes per state element instead of 4, with the same result bits. By default the three
products of o run on the tensor cores as the chunk kernel's do (``DecodeConfig.mma``).

Launch shapes are ``DecodeConfig``s chosen by B*H from ``DECODE_CONFIGS`` / ``CHUNK_FORM_CONFIGS`` (measured on
an H200 with ``python benchmarks/lightning_attn.py --lengths --no-varlen --no-fla --decode-sweep
--chunk-form-sweep`` and ``--decode-launch``; RESULTS.md). The exact step's default is a programmatic dependent
launch (``DecodeConfig.pdl``, Hopper+): its programs may be scheduled while the previous kernel drains and wait
for it before their first load.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from lightswe.errors import UserInputError

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU machines: only the PyTorch reference of the chunk-form step below is usable
    triton = None

LOG2E = 1.4426950408889634


def lightning_attn_decode_chunk_form_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                               slope: torch.Tensor, state: torch.Tensor, chunk_keys: torch.Tensor,
                                               chunk_values: torch.Tensor, positions: torch.Tensor,
                                               rounded_state: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch version of ``lightning_attn_decode_chunk_form`` (same arguments, same in-place updates). The
    output uses round(state) by definition; ``rounded_state``, if given, is only kept equal to it."""
    with torch.autocast(q.device.type, enabled=False):
        rows, block, dtype = q.shape[0], chunk_keys.shape[2], q.dtype
        b = -slope.float() * LOG2E  # [H]
        i = (positions.long() % block)  # [S]
        row = torch.arange(rows, device=q.device)
        chunk_keys[row, :, i] = k
        chunk_values[row, :, i] = v
        j = torch.arange(block, device=q.device, dtype=torch.float32)
        fi = i.float()[:, None, None]  # [S, 1, 1]
        q_decay = torch.exp2(b[None, :, None] * (fi[..., 0] + 1)[:, :, None])  # [S, H, 1]
        # chunk.py's DECAY_OUT rounding: q's decay on the fp32 product, v's (not k's) in the state update
        inter = torch.einsum("shk,shkv->shv", q.float(), state.to(dtype).float()) * q_decay
        scores = torch.einsum("shk,shjk->shj", q.float(), chunk_keys.float())  # [S, H, BT]
        diff = fi - j[None, None, :]
        mask = torch.where(diff >= 0, torch.exp2(b[None, :, None] * diff.clamp(min=0)), 0.0)
        a = (scores * mask).to(dtype).float()
        o = inter + torch.einsum("shj,shjv->shv", a, chunk_values.float())
        k_decay = torch.exp2(b[:, None] * (block - 1 - j)[None, :])  # [H, BT]
        vd = (chunk_values.float() * k_decay[None, :, :, None]).to(dtype).float()
        advanced = state * torch.exp2(b * block)[None, :, None, None] + torch.einsum(
            "shjk,shjv->shkv", chunk_keys.float(), vd)
        complete = (i == block - 1)[:, None, None, None]
        state.copy_(torch.where(complete, advanced, state))
        if rounded_state is not None:
            rounded_state.copy_(torch.where(complete, advanced.to(dtype), rounded_state))
        return o.to(dtype)


def lightning_attn_decode_chunk_form(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor,
                                     state: torch.Tensor, chunk_keys: torch.Tensor, chunk_values: torch.Tensor,
                                     positions: torch.Tensor, rounded_state: torch.Tensor | None = None,
                                     config: DecodeConfig | None = None) -> torch.Tensor:
    """One decode step in the chunk kernel's form (module docstring), Triton on CUDA, else the reference.

    Args:
        q, k: [S, H, K]; v: [S, H, V], bf16 or fp16 (the dtype the chunk kernel rounds to).
        slope: [H] fp32, decay per token exp(-slope).
        state: [S, H, K, V] fp32, the state at the start of each row's current chunk; advanced in place when
            this token completes the chunk.
        chunk_keys: [S, H, BT, K], chunk_values: [S, H, BT, V] in q's dtype: the chunk's earlier tokens at
            indices [0, i); this token is written at index i.
        positions: [S] int, the token's position in its sequence (tokens before it); i = positions % BT.
        rounded_state: optional [S, H, K, V] in q's dtype holding ``state.to(q.dtype)`` (the caller sets it
            wherever it sets ``state``); rewritten in place with the state. The output only needs the rounded
            state (the chunk kernel rounds S0 before its product), so with it the 63 of 64 steps that do not
            complete a chunk read 2 bytes per state element instead of 4; the results are the same bits.
        config: the launch shape (bv columns per program, warps, bk state rows per block of the chunk-completion
            update, split, mma, full_chunk, per_program, stages, pdl (any value > 0: every load after the
            wait); per_sm, stream, split_k unused), default by S*H from CHUNK_FORM_CONFIGS.
    Returns:
        o [S, H, V] in q's dtype. No host synchronisation (CUDA-graph capturable).
    Raises:
        UserInputError (a ValueError): ``rounded_state`` not of ``state``'s shape in q's dtype.
    """
    rows, heads, dim = q.shape
    V = v.shape[-1]
    block = chunk_keys.shape[2]
    if rounded_state is not None and (rounded_state.shape != state.shape or rounded_state.dtype != q.dtype
                                      or not rounded_state.is_contiguous()):
        raise UserInputError(f"rounded_state must be a contiguous {tuple(state.shape)} {q.dtype} tensor (state.to(q.dtype)),"
                         f" got {tuple(rounded_state.shape)} {rounded_state.dtype}; allocate it beside the state")
    if triton is None or not q.is_cuda:
        return lightning_attn_decode_chunk_form_reference(q, k, v, slope, state, chunk_keys, chunk_values,
                                                          positions, rounded_state)
    config = config or next(c for lo, c in reversed(CHUNK_FORM_CONFIGS) if rows * heads >= lo)
    BV = min(config.bv, V)
    BK = min(config.bk or dim, dim)
    o = torch.empty_like(v)
    per_program = math.gcd(config.per_program, rows * heads)
    slope = slope.float().contiguous()
    rounded = state if rounded_state is None else rounded_state  # (unused pointer without ROUNDED)
    pdl = config.pdl if config.pdl and q.is_cuda and _has_pdl(q.device.index or 0) else 0
    if pdl == 2 and per_program > 1:
        raise UserInputError(f"pdl=2 (loads before the wait) needs one (sequence, head) per program, got {config}")
    _decode_chunk_form_kernel[(triton.cdiv(V, BV), rows * heads // per_program)](
                                    q.contiguous(), k.contiguous(), v.contiguous(), o, slope, state, rounded,
                                    chunk_keys, chunk_values, positions, H=heads, K=dim, V=V, BT=block, BV=BV,
                                    BK=BK, ROUNDED=rounded_state is not None, ADVANCE=not config.split,
                                    MMA=config.mma, FULL_CHUNK=config.full_chunk, PER_PROGRAM=per_program,
                                    STAGES=config.stages, PDL=pdl, num_warps=config.warps, launch_pdl=pdl > 0)
    if config.split:
        _chunk_advance_kernel[(triton.cdiv(V, BV), rows * heads)](
            k, slope, state, rounded, chunk_keys, chunk_values, positions, H=heads, K=dim, V=V, BT=block, BV=BV,
            BK=BK, ROUNDED=rounded_state is not None, num_warps=config.warps)
    return o

@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """One launch shape of the decode step ``lightning_attn_decode_triton`` or of the chunk-form step.

    bv: state columns per tile (a tile is the [K, bv] fp32 slice of one (sequence, head) state).
    warps: warps per program.
    per_sm: 0 = one program per tile (grid V/bv x B*H); n > 0 = a persistent grid of n programs per
        multiprocessor, each walking tiles pid, pid + grid, ... with the next tile's loads issued before the
        current tile's stores (reads and writes overlap inside a program instead of only across programs).
    stream: state loads marked evict-first and stores cache-streaming (.cs): the state is touched once per step.
    split: chunk-form step only: the state update of rows completing their chunk in a second launch, so that
        the step's programs carry no tensor-core product (fewer registers: more programs per multiprocessor).
    bk: 0 = the whole [K, bv] tile at once; bk > 0 = the tile in [bk, bv] blocks. Exact step: a loop over the
        blocks (o accumulated in the program) whose loads are software-pipelined ``stages`` deep, so block
        j+1's load is in flight while block j is stored. Chunk-form step: the chunk-completion update's blocks
        (a [bk, BT] x [BT, bv] tensor-core product each: fewer registers than one [K, bv] product).
    stages: exact step with bk > 0: ``tl.range(..., num_stages=stages)`` of the block loop; chunk-form step with
        per_program > 1: of the loop over (sequence, head) pairs.
    split_k: exact step with bk > 0: K split across programs too (one per [bk, bv] block; the last to finish a
        column tile adds the partial outputs: still one launch) instead of the loop.
    mma: chunk-form step: q . S0, q . k_j and a . v_j as tensor-core products of 16-row operands (q or a in every
        row; the chunk kernel computes the same three products on the tensor cores) instead of fp32 multiply-adds
        and cross-warp reductions.
    full_chunk: chunk-form step: all BT rows of the chunk's key and value buffers loaded whatever the position
        (rows past it zeroed after the load), so that no load waits for the position: one memory round trip
        per program instead of two, for up to twice the chunk bytes.
    per_program: chunk-form step: (sequence, head) pairs per program (at most: the gcd with S * H), walked in a
        loop software-pipelined ``stages`` deep (the next pair's loads in flight while one computes).
    pdl: programmatic dependent launch (compute capability 9.0+, Triton's ``launch_pdl``; exact step with one
        program per tile, chunk-form step): the grid may be scheduled while the previous kernel in the stream
        drains; it waits for it (griddepcontrol.wait: that kernel complete, its writes visible), then releases
        the next launch (griddepcontrol.launch_dependents, never before its own wait, so a dependent never starts
        before this kernel's predecessor has completed). 1 = every load after the wait (always valid); 2 = the
        layer's own buffers loaded before the wait (exact step: the state tile; chunk-form step, one pair per
        program: the state or its copy, the position and the chunk rows; q, k, v and the slope after it), so
        their stream overlaps the previous kernel's tail: valid only where the kernel launched just before this
        one writes none of them (the engine's order: the layer's q/k/v kernel, then the step). A measured
        variant, never a default: ``state.zero_()`` right before the step would race with its load.
    maxnreg: exact step, one program per tile: registers per thread capped at this (ptxas ``maxnreg``; 0 = the
        compiler's choice), so that more programs fit on a multiprocessor (BV 64 / 8 warps: 80 registers, 3
        programs of 256 threads; at 64, 4 programs, with 32 bytes of spills: measured slower, 19.9 against 18.8
        us at B=8, fifth session).
    rows: exact step, one program per tile: the tile loaded as K / rows sub-tiles of ``rows`` rows at constant
        offsets from one base pointer (_decode_rows_kernel), so its 8 state loads share one or two address registers:
        ptxas then keeps the step's order (every load, then the stores, then o's sum) in 64 registers without
        spills at BV 64 / 8 warps with rows 32 (80 with rows 0), i.e. 4 programs per multiprocessor. The state's
        bits are the same; o sums its rows in another order. Not yet measured on a GPU (RESULTS.md, fifth session).
    """

    bv: int
    warps: int
    per_sm: int = 0
    stream: bool = False
    split: bool = False
    bk: int = 0
    stages: int = 1
    split_k: bool = False
    mma: bool = False
    full_chunk: bool = False
    per_program: int = 1
    pdl: int = 0
    maxnreg: int = 0
    rows: int = 0

    def __str__(self) -> str:
        grid = f"persistent {self.per_sm}/SM" if self.per_sm else "one program per tile"
        return (f"BV {self.bv}, {self.warps} warps, {grid}" + (", streaming" if self.stream else "")
                + (f", BK {self.bk}" if self.bk else "") + (f", {self.stages} stages" if self.stages > 1 else "")
                + (", tensor cores" if self.mma else "") + (", full chunk" if self.full_chunk else "")
                + (f", {self.per_program} heads per program" if self.per_program > 1 else "")
                + (", split K" if self.split_k else "") + (", split advance" if self.split else "")
                + (f", PDL {self.pdl}" if self.pdl else "")
                + (f", maxnreg {self.maxnreg}" if self.maxnreg else "")
                + (f", {self.rows}-row sub-tiles" if self.rows else ""))


# (minimum B * H, config). From the H200 sweep (RESULTS.md; H=64, D=128, do_bench with L2 flushed and one launch
# per state set in a CUDA graph): the one-program-per-tile configs with BV >= 32 lie within ~1 us of each other
# at every B; the persistent and streaming variants are slower, and so (third session) are the pipelined-block
# and split-K ones. Fourth session (benchmark --decode-launch, 100 steps in a CUDA graph): BV 64 / 8 warps as a
# programmatic dependent launch 18.9 / 35.1 / 67.0 / 130.9 us at B = 8 / 16 / 32 / 64 against 19.8 / 36.5 / 68.5 /
# 132.3 us launched plainly (and 20.0 us for the previous B = 8 default, BV 32 / 2 warps); with a small kernel
# before each step (the sampler's order) the dependent launch is within noise of the plain one (22.0 vs 21.3 us
# at B = 8, 133.8 vs 134.5 us at B = 64).
# Fifth session (benchmark --decode-ablation / --decode-launch): unchanged; capping the registers at 64, BV 64 / 16
# warps, BV 32 / 4 warps and o's products before the tile's stores all measured slower (RESULTS.md).
DECODE_CONFIGS = ((0, DecodeConfig(64, 8, pdl=1)),)

# The exact step for a V-major state (is_v_major; _decode_v_major_kernel): (minimum B * H, config).
# Ninth session, H200 (benchmark --decode-launch, 100 steps in a CUDA graph, H=64, D=128; RESULTS.md): BV 64 / 8
# warps, pdl 1 (74 registers, no shared-memory reduction) 18.0 / 34.5 / 67.3 / 133.0 us at B = 8 / 16 / 32 / 64,
# 87.7 / 91.8 / 94.0 / 95.1% of the bound, against the K-major default's 18.8 / 34.9 / 66.7 / 130.4 us (84.0 /
# 90.6 / 94.8 / 97.0%) in the same call; BV 32 / 8 warps within 0.7 point of it at every B, the others below.
V_MAJOR_DECODE_CONFIGS = ((0, DecodeConfig(64, 8, pdl=1)),)
# The V-major launches the decode sweep and the GPU tests check (one program per tile; pdl 0 / 1).
V_MAJOR_DECODE_SWEEP = tuple(DecodeConfig(bv, w, pdl=n) for bv, w in ((16, 2), (16, 4), (32, 4), (32, 8), (64, 4),
                                                                      (64, 8), (128, 8), (128, 16)) for n in (0, 1))

# Every config the benchmark's decode sweep measures (benchmarks/lightning_attn.py --decode-sweep) and the GPU
# tests check against the reference.
# The 2026-11-30 sweep (RESULTS.md appendix: BV 16-128 x 1-8 warps, streaming, persistent 2-4/SM) is cut to
# its best plain configs and one of each other kind; added in the third session: tiles walked in BK-row blocks
# with pipelined loads, and K split across programs.
DECODE_SWEEP = tuple(
    [DecodeConfig(bv, w) for bv, w in ((32, 1), (32, 2), (32, 4), (64, 2), (64, 4), (64, 8), (128, 4))]
    + [DecodeConfig(32, 2, stream=True), DecodeConfig(64, 8, per_sm=2)]
    + [DecodeConfig(bv, w, bk=bk, stages=n) for bv, w, bk, n in (
        (32, 2, 32, 2), (32, 2, 32, 3), (32, 4, 16, 3), (64, 4, 32, 2), (64, 4, 32, 3), (64, 8, 64, 2),
        (128, 4, 32, 3), (128, 8, 16, 4))]
    + [DecodeConfig(bv, w, bk=bk, split_k=True) for bv, w, bk in ((32, 2, 64), (64, 2, 32), (64, 4, 64), (128, 4, 32))]
    + [DecodeConfig(bv, w, pdl=n) for bv, w in ((32, 2), (32, 4), (64, 4), (64, 8)) for n in (1, 2)]
    + [DecodeConfig(bv, 1, pdl=1) for bv in (16, 32)]
    + [DecodeConfig(64, 8, pdl=1, maxnreg=64), DecodeConfig(64, 16, pdl=1)]
    + [DecodeConfig(64, 8, pdl=1, rows=32), DecodeConfig(64, 8, rows=32), DecodeConfig(64, 8, pdl=1, rows=16, maxnreg=64)]
)


# The chunk-form step (lightning_attn_decode_chunk_form): (minimum S * H, config); bv = state columns per
# program, at least 4 warps (its products run on the tensor cores).
# H200, third decode session (RESULTS.md; H=64, D=128, CUDA graph, mean step over a chunk, reading the rounded
# copy as the engine does): BV 64 / 4 warps, the state update in 32-row blocks, products on the tensor cores was
# the fastest of CHUNK_FORM_SWEEP at B = 8 / 16 / 32 (14.6 / 27.1 / 50.1 us; BV 128 / 8 warps within 1.5%
# everywhere, 87.7 against 89.0 us at B = 64); the previous default (BV 64 / 4 warps, fp32 multiply-adds, fp32
# state) measured 19.2 / 33.1 / 60.3 / 110.7 us in the second session. Fourth session: as a programmatic dependent
# launch (pdl 1) 0.5-0.9 us faster back to back, 0.4-0.6 us slower after another kernel (the sampler's order), so
# plain; pdl 2 (its loads before the wait) takes 145 registers instead of 128 and is slower in both orders.
CHUNK_FORM_CONFIGS = ((0, DecodeConfig(64, 4, bk=32, mma=True)),)
CHUNK_FORM_SWEEP = (DecodeConfig(64, 4), DecodeConfig(64, 4, bk=32),
                    *(DecodeConfig(bv, w, bk=32, mma=True) for bv, w in ((32, 4), (64, 4), (64, 8), (128, 8))),
                    DecodeConfig(64, 4, bk=32, split=True, mma=True),
                    *(DecodeConfig(bv, w, bk=32, mma=True, full_chunk=True) for bv, w in ((32, 4), (64, 4), (64, 8))),
                    *(DecodeConfig(bv, w, bk=32, mma=True, full_chunk=True, per_program=n, stages=2)
                      for bv, w, n in ((64, 4, 4), (64, 8, 4), (64, 4, 8))),
                    DecodeConfig(64, 4, bk=32, mma=True, pdl=1))


def is_v_major(state: torch.Tensor) -> bool:
    """Whether a [B, H, K, V] state is stored V-major: each head's [K, V] matrix transposed in memory (K
    contiguous), i.e. ``state.transpose(-1, -2)`` is contiguous and ``state`` is not. Allocate one with
    ``torch.zeros(B, H, V, K).transpose(-1, -2)``; the exact step then reduces o = q S inside warps
    (_decode_v_major_kernel)."""
    return state.dim() >= 2 and not state.is_contiguous() and state.transpose(-1, -2).is_contiguous()


def _decode_config(n_states: int, V: int, table: tuple = DECODE_CONFIGS) -> DecodeConfig:
    """The config of the last ``table`` row (DECODE_CONFIGS, V_MAJOR_DECODE_CONFIGS) whose minimum B*H is <=
    n_states, BV capped at V."""
    config = next(c for lo, c in reversed(table) if n_states >= lo)
    return dataclasses.replace(config, bv=min(config.bv, V))


@functools.cache
def _has_pdl(device_index: int) -> bool:
    """Programmatic dependent launch (griddepcontrol) needs compute capability 9.0+, and a driver of CUDA 12.3+ to
    keep its launch attribute inside a captured CUDA graph (the sampler's step, model/engine.py); otherwise the
    step launches plainly (same results, only the launch overlap is lost)."""
    return torch.cuda.get_device_capability(device_index)[0] >= 9 and _cuda_driver_version() >= 12030


def _cuda_driver_version() -> int:
    """The CUDA driver's version as cuDriverGetVersion gives it (12030 = 12.3); 0 where libcuda cannot be asked.
    torch 2.11 has no public accessor, so libcuda (already loaded by torch's CUDA context) is asked directly."""
    import ctypes

    version = ctypes.c_int(0)
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            if ctypes.CDLL(name).cuDriverGetVersion(ctypes.byref(version)) == 0:
                return version.value
        except (OSError, AttributeError):
            continue
    return 0


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


if triton is not None:

    @triton.jit
    def _tile_ptrs(state, t, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr):
        """Tile t = (sequence*head i_bh, column block i_v): its state pointers [K, BV], i_bh and columns."""
        NV: tl.constexpr = V // BV
        i_bh, i_v = t // NV, t % NV
        o_k = tl.arange(0, K)
        o_v = i_v * BV + tl.arange(0, BV)
        return state + i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :], i_bh, o_k, o_v

    @triton.jit
    def _load_tile(state, t, n_tiles, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, STREAM: tl.constexpr,
                   MASKED: tl.constexpr):
        """The [K, BV] fp32 state slice of tile t (zeros where MASKED and t >= n_tiles)."""
        p_s, _, _, _ = _tile_ptrs(state, t, K, V, BV)
        if MASKED:
            if STREAM:
                b_s = tl.load(p_s, mask=t < n_tiles, other=0.0, eviction_policy="evict_first")
            else:
                b_s = tl.load(p_s, mask=t < n_tiles, other=0.0)
        else:
            if STREAM:
                b_s = tl.load(p_s, eviction_policy="evict_first")
            else:
                b_s = tl.load(p_s)
        return b_s

    @triton.jit
    def _decode_tile(q, k, v, o, slope, state, s_tile, t, n_tiles, H: tl.constexpr, K: tl.constexpr,
                     V: tl.constexpr, BV: tl.constexpr, STREAM: tl.constexpr, MASKED: tl.constexpr):
        """Tile t with its state slice s_tile loaded: S = lambda S + k^T v stored back, o[:, cols] = q S."""
        p_s, i_bh, o_k, o_v = _tile_ptrs(state, t, K, V, BV)
        if MASKED:  # persistent grid: t may lie past the last tile (nothing is stored then)
            ok = t < n_tiles
            i_bh = tl.where(ok, i_bh, 0)
        decay = tl.exp(-tl.load(slope + i_bh % H).to(tl.float32))
        b_q = tl.load(q + i_bh * K + o_k).to(tl.float32)
        b_k = tl.load(k + i_bh * K + o_k).to(tl.float32)
        b_v = tl.load(v + i_bh * V + o_v).to(tl.float32)
        b_s = s_tile * decay + b_k[:, None] * b_v[None, :]
        # the tile's stores before o's products: o's sum over K crosses warps (shared memory, barriers), and stores
        # placed after it wait for those barriers. That order (72 instead of 80 registers at BV 64 / 8 warps, the
        # same bits) measured 22.1 against 19.1 us at B=8 and 145.0 against 130.4 us at B=64 (H200, fifth
        # session, RESULTS.md; benchmark kernel _tile MODE 3)
        if MASKED:
            if STREAM:
                tl.store(p_s, b_s, mask=ok, cache_modifier=".cs")
            else:
                tl.store(p_s, b_s, mask=ok)
        else:
            if STREAM:
                tl.store(p_s, b_s, cache_modifier=".cs")
            else:
                tl.store(p_s, b_s)
        b_o = tl.sum(b_q[:, None] * b_s, axis=0).to(o.dtype.element_ty)
        if MASKED:
            tl.store(o + i_bh * V + o_v, b_o, mask=ok)
        else:
            tl.store(o + i_bh * V + o_v, b_o)

    @triton.jit
    def _decode_kernel(q, k, v, o, slope, state, state_out, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BV: tl.constexpr, STREAM: tl.constexpr, PDL: tl.constexpr, OUT: tl.constexpr):
        """Grid (V / BV * B * H,): one program per tile, tile = (sequence*head, BV columns); the updated tile
        stored to ``state_out`` where OUT, else in place.
        PDL (launched as a programmatic dependent, DecodeConfig.pdl): 1 = every load after griddepcontrol.wait
        (the previous kernel complete and its writes visible); 2 = the state tile loaded before the wait, q, k, v
        and the slope after it. Either way the next launch is released (launch_dependents) only after the wait,
        so a dependent of this kernel never starts before this kernel's own predecessor has completed."""
        t = tl.program_id(0)
        if PDL == 1:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        s_tile = _load_tile(state, t, 0, K, V, BV, STREAM, False)
        if PDL == 2:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        if OUT:
            _decode_tile(q, k, v, o, slope, state_out, s_tile, t, 0, H, K, V, BV, STREAM, False)
        else:
            _decode_tile(q, k, v, o, slope, state, s_tile, t, 0, H, K, V, BV, STREAM, False)

    @triton.jit
    def _decode_rows_kernel(q, k, v, o, slope, state, state_out, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                            BV: tl.constexpr, ROWS: tl.constexpr, PDL: tl.constexpr, OUT: tl.constexpr):
        """_decode_kernel's step (same grid, tiles, launch and state arithmetic) with the [K, BV] tile loaded as
        K / ROWS sub-tiles of [ROWS, BV] at constant offsets from one base pointer (DecodeConfig.rows): every load
        first, then each sub-tile updated and stored, its o products accumulated; then o's sum across the
        program. The state's bits are _decode_kernel's; o's rows are summed in another order."""
        t = tl.program_id(0)
        if PDL == 1:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        NV: tl.constexpr = V // BV
        N: tl.constexpr = K // ROWS
        i_bh, i_v = t // NV, t % NV
        o_r = tl.arange(0, ROWS)
        o_v = i_v * BV + tl.arange(0, BV)
        offs = i_bh.to(tl.int64) * K * V + o_r[:, None] * V + o_v[None, :]
        tiles = ()
        for j in tl.static_range(N):
            tiles = tiles + (tl.load(state + offs + j * ROWS * V),)
        if PDL == 2:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        decay = tl.exp(-tl.load(slope + i_bh % H).to(tl.float32))
        b_v = tl.load(v + i_bh * V + o_v).to(tl.float32)
        b_ks = ()
        b_qs = ()
        for j in tl.static_range(N):
            b_ks = b_ks + (tl.load(k + i_bh * K + j * ROWS + o_r).to(tl.float32),)
            b_qs = b_qs + (tl.load(q + i_bh * K + j * ROWS + o_r).to(tl.float32),)
        acc = tl.zeros([ROWS, BV], dtype=tl.float32)
        for j in tl.static_range(N):
            b_s = tiles[j] * decay + b_ks[j][:, None] * b_v[None, :]
            if OUT:
                tl.store(state_out + offs + j * ROWS * V, b_s)
            else:
                tl.store(state + offs + j * ROWS * V, b_s)
            acc += b_qs[j][:, None] * b_s
        tl.store(o + i_bh * V + o_v, tl.sum(acc, axis=0).to(o.dtype.element_ty))

    @triton.jit
    def _decode_v_major_kernel(q, k, v, o, slope, state, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                               BV: tl.constexpr, PDL: tl.constexpr):
        """_decode_kernel's step for a V-major state (each [K, V] state stored transposed, K contiguous): grid
        (V / BV * B * H,), one program per [BV, K] tile of S^T; S^T = lambda S^T + v k^T stored back (the same
        fp32 operations as _decode_kernel: the same state bits), then o[cols] = S^T q summed along K. Every row of
        the tile lies inside one warp (32 threads x 4 contiguous floats per 128-element row), so o's sum is in-thread
        adds and warp shuffles: no shared memory and no barrier, where the K-major tile sums across warps.
        PDL 1: every load after griddepcontrol.wait, the next launch released after it (DecodeConfig.pdl)."""
        t = tl.program_id(0)
        if PDL == 1:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        NV: tl.constexpr = V // BV
        i_bh, i_v = t // NV, t % NV
        o_k = tl.arange(0, K)
        o_v = i_v * BV + tl.arange(0, BV)
        p_s = state + i_bh.to(tl.int64) * K * V + o_v[:, None] * K + o_k[None, :]
        b_s = tl.load(p_s)
        decay = tl.exp(-tl.load(slope + i_bh % H).to(tl.float32))
        b_q = tl.load(q + i_bh * K + o_k).to(tl.float32)
        b_k = tl.load(k + i_bh * K + o_k).to(tl.float32)
        b_v = tl.load(v + i_bh * V + o_v).to(tl.float32)
        b_s = b_s * decay + b_k[None, :] * b_v[:, None]
        tl.store(p_s, b_s)
        tl.store(o + i_bh * V + o_v, tl.sum(b_s * b_q[None, :], axis=1).to(o.dtype.element_ty))

    @triton.jit
    def _decode_persistent_kernel(q, k, v, o, slope, state, n_tiles, H: tl.constexpr, K: tl.constexpr,
                                  V: tl.constexpr, BV: tl.constexpr, STREAM: tl.constexpr):
        """Grid (P,): program p updates tiles p, p + P, ...; tile i+1's state load is issued before tile i's
        update and stores, so each program keeps a read in flight while it writes."""
        pid, n_prog = tl.program_id(0), tl.num_programs(0)
        s_tile = _load_tile(state, pid, n_tiles, K, V, BV, STREAM, True)
        for i in range(tl.cdiv(n_tiles - pid, n_prog)):
            t = pid + i * n_prog
            s_next = _load_tile(state, t + n_prog, n_tiles, K, V, BV, STREAM, True)
            _decode_tile(q, k, v, o, slope, state, s_tile, t, n_tiles, H, K, V, BV, STREAM, True)
            s_tile = s_next

    @triton.jit
    def _decode_blocks_kernel(q, k, v, o, slope, state, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BV: tl.constexpr, BK: tl.constexpr, STAGES: tl.constexpr):
        """Grid (V / BV * B * H,): one program per tile, walking it in [BK, BV] blocks: S = lambda S + k^T v
        stored block by block, o accumulated; the loop's loads pipelined STAGES deep (block j+1's load in
        flight while block j is stored)."""
        t = tl.program_id(0)
        NV: tl.constexpr = V // BV
        i_bh, i_v = t // NV, t % NV
        decay = tl.exp(-tl.load(slope + i_bh % H).to(tl.float32))
        o_v = i_v * BV + tl.arange(0, BV)
        b_v = tl.load(v + i_bh * V + o_v).to(tl.float32)
        b_o = tl.zeros([BV], dtype=tl.float32)
        p_base = state + i_bh.to(tl.int64) * K * V
        for kb in tl.range(0, K // BK, num_stages=STAGES):
            o_k = kb * BK + tl.arange(0, BK)
            p_s = p_base + o_k[:, None] * V + o_v[None, :]
            b_k = tl.load(k + i_bh * K + o_k).to(tl.float32)
            b_s = tl.load(p_s) * decay + b_k[:, None] * b_v[None, :]
            tl.store(p_s, b_s)
            b_q = tl.load(q + i_bh * K + o_k).to(tl.float32)
            b_o += tl.sum(b_q[:, None] * b_s, axis=0)
        tl.store(o + i_bh * V + o_v, b_o.to(o.dtype.element_ty))

    @triton.jit
    def _decode_split_k_kernel(q, k, v, o, slope, state, partial, count, H: tl.constexpr, K: tl.constexpr,
                               V: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr):
        """Grid (K / BK * V / BV * B * H,): one program per [BK, BV] block (K split as well as V: more, smaller
        programs). Each updates its block and writes its partial o (over its BK rows) to ``partial``; the last
        program of a column tile to arrive (counted in ``count``, reset by it) adds the partials in order."""
        t = tl.program_id(0)
        NV: tl.constexpr = V // BV
        NK: tl.constexpr = K // BK
        i_c, i_k = t // NK, t % NK
        i_bh, i_v = i_c // NV, i_c % NV
        decay = tl.exp(-tl.load(slope + i_bh % H).to(tl.float32))
        o_k = i_k * BK + tl.arange(0, BK)
        o_v = i_v * BV + tl.arange(0, BV)
        p_s = state + i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
        b_s = tl.load(p_s)
        b_k = tl.load(k + i_bh * K + o_k).to(tl.float32)
        b_v = tl.load(v + i_bh * V + o_v).to(tl.float32)
        b_q = tl.load(q + i_bh * K + o_k).to(tl.float32)
        b_s = b_s * decay + b_k[:, None] * b_v[None, :]
        tl.store(p_s, b_s)
        tl.store(partial + t.to(tl.int64) * BV + tl.arange(0, BV), tl.sum(b_q[:, None] * b_s, axis=0))
        tl.debug_barrier()  # every thread's partial stored before the release below
        arrived = tl.atomic_add(count + i_c, 1, sem="acq_rel")
        if arrived == NK - 1:
            p_p = partial + i_c.to(tl.int64) * NK * BV + tl.arange(0, NK)[:, None] * BV + tl.arange(0, BV)[None, :]
            b_o = tl.sum(tl.load(p_p, cache_modifier=".cg"), axis=0)
            tl.store(o + i_bh * V + o_v, b_o.to(o.dtype.element_ty))
            tl.atomic_xchg(count + i_c, 0)

    _COUNTS: dict[int, torch.Tensor] = {}

    def _arrival_counts(device: torch.device, n: int) -> torch.Tensor:
        """A zeroed int32 counter per column tile for _decode_split_k_kernel (kept: its programs reset them)."""
        index = device.index or 0
        if index not in _COUNTS or _COUNTS[index].numel() < n:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("the split-K decode step needs its counters allocated before CUDA-graph capture: "
                                   "run the step once eagerly at this batch size first")
            _COUNTS[index] = torch.zeros(max(n, 4096), device=device, dtype=torch.int32)
        return _COUNTS[index]

    def lightning_attn_decode_triton(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, state: torch.Tensor,
        config: DecodeConfig | None = None, state_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q, k [B, H, K], v [B, H, V] contiguous; state [B, H, K, V] fp32 contiguous, updated in place, or
        with ``state_out`` (same shape, fp32, contiguous, not overlapping ``state``) read from ``state`` and the
        updated state written to ``state_out`` (``state`` unchanged; one-program-per-tile configs only).
        ``config`` overrides the launch shape chosen by B*H from DECODE_CONFIGS (benchmark sweep, tests).
        Raises UserInputError (a ValueError) for a ``state_out`` of another shape/dtype/layout or with a config that cannot use it."""
        B, H, K = q.shape
        V = v.shape[-1]
        if is_v_major(state):
            return _decode_v_major(q, k, v, slope, state, config, state_out)
        config = config or _decode_config(B * H, V)
        plain = not (config.bk or config.per_sm)
        if state_out is not None and (state_out.shape != state.shape or state_out.dtype != torch.float32
                                      or not state_out.is_contiguous() or not plain):
            raise UserInputError(f"state_out must be a contiguous fp32 {tuple(state.shape)} tensor and the config one "
                             f"program per tile, got {tuple(state_out.shape)} {state_out.dtype} with {config}")
        if (config.pdl or config.maxnreg or config.rows) and not plain:
            raise UserInputError(f"pdl, maxnreg and rows need a one-program-per-tile config, got {config}")
        if config.rows and (config.stream or K % config.rows or config.rows & (config.rows - 1)):
            raise UserInputError(f"rows must be a power of two dividing K={K}, without stream, got {config}")
        pdl = config.pdl if config.pdl and q.is_cuda and _has_pdl(q.device.index or 0) else 0  # else plain
        bv = min(config.bv, V)
        o = torch.empty_like(v)
        n_tiles = B * H * triton.cdiv(V, bv)
        if config.bk and config.split_k:
            bk = min(config.bk, K)
            partial = torch.empty(n_tiles * triton.cdiv(K, bk) * bv, device=q.device, dtype=torch.float32)
            _decode_split_k_kernel[(n_tiles * triton.cdiv(K, bk),)](
                q, k, v, o, slope, state, partial, _arrival_counts(q.device, n_tiles), H=H, K=K, V=V, BV=bv, BK=bk,
                num_warps=config.warps)
        elif config.bk and not config.per_sm:
            _decode_blocks_kernel[(n_tiles,)](q, k, v, o, slope, state, H=H, K=K, V=V, BV=bv, BK=min(config.bk, K),
                                              STAGES=config.stages, num_warps=config.warps)
        elif config.per_sm:
            grid = (min(n_tiles, config.per_sm * _num_sms(q.device.index or 0)),)
            _decode_persistent_kernel[grid](q, k, v, o, slope, state, n_tiles, H=H, K=K, V=V, BV=bv,
                                            STREAM=config.stream, num_warps=config.warps)
        elif config.rows:
            _decode_rows_kernel[(n_tiles,)](q, k, v, o, slope, state, state if state_out is None else state_out, H=H,
                                            K=K, V=V, BV=bv, ROWS=config.rows, PDL=pdl, OUT=state_out is not None,
                                            num_warps=config.warps, launch_pdl=pdl > 0,
                                            **({"maxnreg": config.maxnreg} if config.maxnreg else {}))
        else:
            _decode_kernel[(n_tiles,)](q, k, v, o, slope, state, state if state_out is None else state_out, H=H, K=K,
                                       V=V, BV=bv, STREAM=config.stream, PDL=pdl, OUT=state_out is not None,
                                       num_warps=config.warps, launch_pdl=pdl > 0,
                                       **({"maxnreg": config.maxnreg} if config.maxnreg else {}))
        return o

    def _decode_v_major(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, state: torch.Tensor,
                        config: DecodeConfig | None, state_out: torch.Tensor | None) -> torch.Tensor:
        """lightning_attn_decode_triton for a V-major state (``is_v_major``): _decode_v_major_kernel, one program
        per [BV, K] tile, config by B*H from V_MAJOR_DECODE_CONFIGS."""
        B, H, K = q.shape
        V = v.shape[-1]
        config = config or _decode_config(B * H, V, V_MAJOR_DECODE_CONFIGS)
        if state_out is not None or config.per_sm or config.bk or config.rows or config.stream or config.pdl > 1:
            raise UserInputError(f"a V-major state takes one program per tile with pdl 0 or 1 and no state_out, "
                                 f"got {config}{' and a state_out' if state_out is not None else ''}; pass a "
                                 f"K-major (contiguous) state for the other launch shapes")
        bv = min(config.bv, V)
        pdl = config.pdl if config.pdl and q.is_cuda and _has_pdl(q.device.index or 0) else 0
        o = torch.empty_like(v)
        _decode_v_major_kernel[(B * H * triton.cdiv(V, bv),)](
            q, k, v, o, slope, state, H=H, K=K, V=V, BV=bv, PDL=pdl, num_warps=config.warps, launch_pdl=pdl > 0,
            **({"maxnreg": config.maxnreg} if config.maxnreg else {}))
        return o

    @triton.jit
    def _decode_chunk_form_kernel(q, k, v, o, slope, state, rounded, chunk_keys, chunk_values, positions,
                                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                                  BV: tl.constexpr, BK: tl.constexpr, ROUNDED: tl.constexpr,
                                  ADVANCE: tl.constexpr, MMA: tl.constexpr, FULL_CHUNK: tl.constexpr,
                                  PER_PROGRAM: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
        """Grid (V / BV, S * H / PER_PROGRAM): program (i_v, p) runs the step (_chunk_form_step) of column block
        i_v for sequence*heads p * PER_PROGRAM + [0, PER_PROGRAM), in a loop whose loads are software-pipelined
        STAGES deep (the next head's state and chunk loaded while this one computes). PDL: launched as a
        programmatic dependent, every load after griddepcontrol.wait, the next launch released after it."""
        if PDL == 1:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        i_v = tl.program_id(0)
        if PER_PROGRAM == 1:
            _chunk_form_step(q, k, v, o, slope, state, rounded, chunk_keys, chunk_values, positions, i_v,
                             tl.program_id(1), H, K, V, BT, BV, BK, ROUNDED, ADVANCE, MMA, FULL_CHUNK, PDL)
        else:
            for h in tl.range(0, PER_PROGRAM, num_stages=STAGES):
                _chunk_form_step(q, k, v, o, slope, state, rounded, chunk_keys, chunk_values, positions, i_v,
                                 tl.program_id(1) * PER_PROGRAM + h, H, K, V, BT, BV, BK, ROUNDED, ADVANCE, MMA,
                                 FULL_CHUNK, 0)

    @triton.jit
    def _chunk_rows(p_c, o_t, o_c, C: tl.constexpr, before, FULL_CHUNK: tl.constexpr):
        """Rows [0, BT) x columns o_c of a chunk buffer (row stride C), zeros where not ``before``; FULL_CHUNK:
        every row loaded (the load does not wait for the position), the stale rows zeroed after."""
        if FULL_CHUNK:
            return tl.where(before[:, None], tl.load(p_c + o_t[:, None] * C + o_c[None, :]), 0.0)
        else:
            return tl.load(p_c + o_t[:, None] * C + o_c[None, :], mask=before[:, None], other=0.0)

    @triton.jit
    def _chunk_form_step(q, k, v, o, slope, state, rounded, chunk_keys, chunk_values, positions, i_v, i_bh,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                         BK: tl.constexpr, ROUNDED: tl.constexpr, ADVANCE: tl.constexpr, MMA: tl.constexpr,
                         FULL_CHUNK: tl.constexpr, PDL: tl.constexpr):
        """The step of column block i_v for sequence*head i_bh; with ADVANCE also the state update of rows whose
        chunk this token completes (else _chunk_advance_kernel does it in the next launch). ROUNDED: the
        rounded state is read from ``rounded`` (2 bytes per element) instead of rounding the fp32 state.
        MMA: the products on the tensor cores (as chunk.py's _fwd_kernel), else fp32 multiply-adds. FULL_CHUNK: all
        BT rows of the chunk buffers loaded (no load waits for the position; rows >= i are zeroed after).
        PDL == 2: the state, position and chunk rows loaded before griddepcontrol.wait, q, k, v and the slope
        after it (DecodeConfig.pdl)."""
        o_k = tl.arange(0, K)
        o_v = i_v * BV + tl.arange(0, BV)
        o_t = tl.arange(0, BT)
        p_ck = chunk_keys + i_bh.to(tl.int64) * BT * K
        p_cv = chunk_values + i_bh.to(tl.int64) * BT * V
        # the state slice first: the step's one large read, independent of the position
        tile = i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
        if ROUNDED:
            b_s = tl.load(rounded + tile)
        else:
            b_s = tl.load(state + tile).to(q.dtype.element_ty)
        if PDL == 2:  # the layer's own buffers (position, chunk rows) before the wait; q, k, v, slope after it
            i = tl.load(positions + i_bh // H).to(tl.int32) % BT
            before = o_t < i
            c_v = _chunk_rows(p_cv, o_t, o_v, V, before, FULL_CHUNK)
            c_k = _chunk_rows(p_ck, o_t, o_k, K, before, FULL_CHUNK)
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
            b = -tl.load(slope + i_bh % H).to(tl.float32) * 1.4426950408889634
            b_k = tl.load(k + i_bh * K + o_k)
            b_v = tl.load(v + i_bh * V + o_v)
            b_q = tl.load(q + i_bh * K + o_k)
            c_v = tl.where((o_t == i)[:, None], b_v[None, :], c_v)  # [BT, BV]: the chunk so far, this token at i
            q_decay = tl.exp2(b * (i + 1).to(tl.float32))
        else:  # (this order: 128 registers at BV 64 / 4 warps with the copy; the order above takes 145-162)
            b = -tl.load(slope + i_bh % H).to(tl.float32) * 1.4426950408889634
            i = tl.load(positions + i_bh // H).to(tl.int32) % BT
            before = o_t < i
            b_k = tl.load(k + i_bh * K + o_k)
            b_v = tl.load(v + i_bh * V + o_v)
            if FULL_CHUNK:  # every row: the load does not wait for i (rows >= i are stale, replaced below)
                c_v = tl.where(before[:, None], tl.load(p_cv + o_t[:, None] * V + o_v[None, :]), 0.0)
            else:
                c_v = tl.load(p_cv + o_t[:, None] * V + o_v[None, :], mask=before[:, None], other=0.0)
            c_v = tl.where((o_t == i)[:, None], b_v[None, :], c_v)  # [BT, BV]: the chunk so far, this token at i
            # as _fwd_kernel (DECAY_OUT): (q . round(S0)) lambda^(i+1) + sum_j round((q . k_j) lambda^(i-j)) v_j
            q_decay = tl.exp2(b * (i + 1).to(tl.float32))
            b_q = tl.load(q + i_bh * K + o_k)
            if FULL_CHUNK:
                c_k = tl.where(before[:, None], tl.load(p_ck + o_t[:, None] * K + o_k[None, :]), 0.0)
            else:
                c_k = tl.load(p_ck + o_t[:, None] * K + o_k[None, :], mask=before[:, None], other=0.0)
        c_k = tl.where((o_t == i)[:, None], b_k[None, :], c_k)  # [BT, K]
        diff = (i - o_t).to(tl.float32)
        m = tl.where(o_t <= i, tl.exp2(b * tl.maximum(diff, 0.0)), 0.0)
        if MMA:  # the chunk kernel's three products on the tensor cores, q in all 16 rows of an [16, K] operand
            R: tl.constexpr = 16
            scores = tl.dot(c_k, tl.trans(tl.broadcast_to(b_q[None, :], (R, K))))  # [BT, R], columns equal
            a = tl.trans(scores * m[:, None]).to(b_q.dtype)  # [R, BT]
            acc = tl.dot(tl.broadcast_to(b_q[None, :], (R, K)), b_s) * q_decay  # the decay on the fp32 product
            acc = tl.dot(a, c_v.to(b_q.dtype), acc=acc)  # [R, BV], rows equal
            b_o = tl.sum(tl.where((tl.arange(0, R) == 0)[:, None], acc, 0.0), axis=0)
        else:  # fp32 multiply-adds
            b_o = tl.sum(b_q.to(tl.float32)[:, None] * b_s.to(tl.float32), axis=0) * q_decay
            scores = tl.sum(b_q.to(tl.float32)[None, :] * c_k.to(tl.float32), axis=1)  # [BT]
            a = (scores * m).to(b_q.dtype).to(tl.float32)
            b_o += tl.sum(a[:, None] * c_v.to(tl.float32), axis=0)
        tl.store(o + i_bh * V + o_v, b_o.to(o.dtype.element_ty))
        if i_v == 0:
            tl.store(p_ck + i * K + o_k, b_k)
        tl.store(p_cv + i * V + o_v, b_v)
        if ADVANCE:
            if i == BT - 1:  # the chunk is complete: advance the state as _fwd_kernel does
                _advance(state, rounded, k, p_ck, c_v, i_bh, o_v, b, True, K, V, BT, BK, ROUNDED)

    @triton.jit
    def _advance(state, rounded, k, p_ck, c_v, i_bh, o_v, b, LAST_FROM_K: tl.constexpr, K: tl.constexpr,
                 V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, ROUNDED: tl.constexpr):
        """S0 = 2^(b BT) S0 + k_j^T round(v_j 2^(b (BT-1-j))) on the [K, BV] tile of columns o_v, in [BK, BV]
        blocks; the product as the chunk kernel's with DECAY_OUT (the decay on v's narrower slice): rounded inputs
        on the tensor cores, fp32 accumulation.
        c_v [BT, BV]: the chunk's values; the keys are read from p_ck ([BT, K]), the last row from k instead
        when LAST_FROM_K (this token's key, not yet in the buffer). Writes the fp32 tile (and its rounding)."""
        o_t = tl.arange(0, BT)
        k_decay = tl.exp2(b * (BT - 1 - o_t).to(tl.float32))
        b_vd = (c_v.to(tl.float32) * k_decay[:, None]).to(c_v.dtype)  # [BT, BV]: every block uses it
        lam = tl.exp2(b * BT)
        for kb in tl.static_range(K // BK):  # unrolled: no inner loop in the pipelined loop over heads
            o_k = kb * BK + tl.arange(0, BK)
            if LAST_FROM_K:
                c_k = tl.load(p_ck + o_t[:, None] * K + o_k[None, :], mask=(o_t < BT - 1)[:, None], other=0.0)
                b_k = tl.load(k + i_bh * K + o_k)
                c_k = tl.where((o_t == BT - 1)[:, None], b_k[None, :], c_k)
            else:
                c_k = tl.load(p_ck + o_t[:, None] * K + o_k[None, :])
            p_s = i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
            b_s = tl.dot(tl.trans(c_k), b_vd, acc=tl.load(state + p_s) * lam)
            tl.store(state + p_s, b_s)
            if ROUNDED:
                tl.store(rounded + p_s, b_s.to(rounded.dtype.element_ty))

    @triton.jit
    def _chunk_advance_kernel(k, slope, state, rounded, chunk_keys, chunk_values, positions, H: tl.constexpr,
                              K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                              BK: tl.constexpr, ROUNDED: tl.constexpr):
        """After _decode_chunk_form_kernel(ADVANCE=False): the state update of the rows whose chunk is complete
        (their programs read the whole chunk, the others only their position)."""
        i_v, i_bh = tl.program_id(0), tl.program_id(1)
        i = tl.load(positions + i_bh // H).to(tl.int32) % BT
        if i == BT - 1:
            b = -tl.load(slope + i_bh % H).to(tl.float32) * 1.4426950408889634
            o_v = i_v * BV + tl.arange(0, BV)
            o_t = tl.arange(0, BT)
            c_v = tl.load(chunk_values + i_bh.to(tl.int64) * BT * V + o_t[:, None] * V + o_v[None, :])
            _advance(state, rounded, k, chunk_keys + i_bh.to(tl.int64) * BT * K, c_v, i_bh, o_v, b, False, K, V,
                     BT, BK, ROUNDED)
