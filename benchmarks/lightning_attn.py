"""Lightning attention timings: our Triton kernels vs flash-linear-attention at equal math (CUDA only).

    python benchmarks/lightning_attn.py                  # H=64, D=128, 65,536 tokens: T = 2K, 8K, 32K, 64K,
                                                         # a packed batch of 64 sequences, decode B = 8..64
    python benchmarks/lightning_attn.py --lengths 8192 --no-varlen --decode-batches 8 --sdpa
    python benchmarks/lightning_attn.py --lengths --no-varlen --no-fla --decode-sweep --chunk-form-sweep
                                                         # decode only, every launch config
    python benchmarks/lightning_attn.py --lengths --no-varlen --no-fla --decode-launch
                                                         # decode launch study: dependent launches, register cap,
                                                         # o before the stores, copy_/mul_, CUPTI, q/k/v kernel
    python benchmarks/lightning_attn.py --lengths --no-varlen --no-fla --decode-ablation --decode-batches 8 16
                                                         # the exact step taken apart against mul_, timelines
    ncu --profile-from-start off --metrics ... python benchmarks/lightning_attn.py --decode-ncu-target --decode-batches 8
    python benchmarks/lightning_attn.py --prefill-sweep      # every chunk.FWD_SWEEP / BWD_SWEEP config, alone
    python benchmarks/lightning_attn.py --compile-only --pack-triton-cache /tmp/tc   # compile ours and fla's
        # ~300 autotune configs in parallel processes, let fla's autotuners time them once (results kept on disk
        # in TRITON_CACHE_DIR), pack that cache; then in the same call (or a later one, after
        # --unpack-triton-cache /tmp/tc) the table runs fla with its own picks without re-tuning:
    python benchmarks/lightning_attn.py --compile-workers 0 --decode-batches
    python benchmarks/lightning_attn.py --rounding-emulation # CPU: the forward's two roundings compared

Decode rows, per B: ours (the exact fp32 step, lightning_attn_decode) alone and inside a CUDA graph (one launch
per rotating state set, as the sampler engine replays its step), the sampler's chunk-form step (its default
config, with --chunk-form-sweep every decode.CHUNK_FORM_SWEEP config; reading the fp32 state or its bf16 copy; in
a CUDA graph, at a step inside a chunk and at a chunk-completing step, each against the bytes it must move), and
two references: torch's copy_ of the same state bytes (a plain stream of them) and an empty Triton launch (the
timer's own floor). With --decode-launch the launch study (decode_launch_study) replaces these rows.

Same math on every lightning row: fla's chunk_simple_gla / fused_recurrent_simple_gla with g_gamma = -slope
and scale = 1.0 compute MiniMax's S_t = exp(-slope) S_{t-1} + k_t^T v_t, o_t = q_t S_t.

Two timers per row:
  event    CUDA events around 10 back-to-back calls after 3 warm-ups, mean per call (host overhead shows when
           the host cannot keep ahead of the GPU);
  do_bench ``triton.testing.do_bench`` median, the L2 cache flushed before every call (GPU time per call);
CUDA-graph rows: the same two timers around a graph replay, divided by the launches in the graph.
The bandwidth bound is the fewest bytes (inputs read once, outputs written once) over the device-to-device
copy bandwidth measured here (bytes read + written): forward q, k, v, o and the final state; forward+backward
11 activation tensors (q, k, v, o, dO, dq, dk, dv and q, k, v read again); decode the fp32 state read and
written plus q, k, v, o. "of bound" = bound / do_bench time; "vs fla" = fla time / ours, per timer.
fwd+bwd runs torch.autograd.grad (no .grad accumulation) after a forward that records the graph.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch
import torch.nn.functional as F
from lightswe.kernels.lightning_attn import lightning_attn, lightning_attn_decode


def event_mean(fn, warmup: int = 3, iters: int = 10) -> float:
    """Mean milliseconds per call over `iters` back-to-back calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def bench_median(fn, rep: int = 100) -> float:
    """Median milliseconds per call, L2 flushed before each (triton.testing.do_bench over ~rep ms)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=min(25, rep), rep=rep, return_mode="median")


def copy_bandwidth() -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written."""
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = event_mean(lambda: dst.copy_(src))
    return 2 * src.numel() / (ms * 1e-3)


def slopes(heads: int, layer: int = 0, layers: int = 80) -> torch.Tensor:
    """MiniMax's per-head decay rates (DESIGN.md): 2^(-8(h+1)/H) * (1 - l/(L-1) + 1e-5)."""
    base = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])
    return (base * (1 - layer / (layers - 1) + 1e-5)).float().cuda()


class Table:
    """Rows of (op, shape, mode, event ms, do_bench ms, bound ms) with speed-ups against the fla row."""

    HEADER = ("| op | shape | mode | event ms | do_bench ms | BW bound ms | of bound | vs fla (event) "
              "| vs fla (do_bench) |\n|---|---|---|---|---|---|---|---|---|")

    def __init__(self, bandwidth: float) -> None:
        self.bandwidth = bandwidth
        self.lines: list[str] = []
        self.ref: dict[tuple[str, str], tuple[float, float]] = {}

    def add(self, op: str, shape: str, mode: str, times: tuple[float, float], nbytes: float,
            is_fla: bool = False) -> None:
        bound = nbytes / self.bandwidth * 1e3
        ev, med = times
        if is_fla:
            self.ref[(shape, mode)] = times
        fla = self.ref.get((shape, mode))
        ratios = (f"{fla[0] / ev:5.2f}x | {fla[1] / med:5.2f}x" if fla and not is_fla else "  -   |   -  ")
        self.lines.append(f"| {op:<30} | {shape:<18} | {mode:<7} | {ev:8.4f} | {med:8.4f} | {bound:7.4f} | "
                          f"{bound / med:6.1%} | {ratios} |")
        print(self.lines[-1], flush=True)  # as it comes, in case a long run is cut short

    def __str__(self) -> str:
        return "\n".join([self.HEADER, *self.lines])


def both(fn) -> tuple[float, float]:
    return event_mean(fn), bench_median(fn)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def prefill_rows(table: Table, shape: str, q, k, v, slope, cu, fla_chunk) -> None:
    """Forward and forward+backward rows of fla (first) and ours on one input."""
    act = q.numel() * q.element_size()
    n_seqs = q.shape[0] if cu is None else cu.numel() - 1
    state_bytes = n_seqs * q.shape[2] * q.shape[3] * v.shape[3] * 4
    cands = {"ours (Triton)": lambda q, k, v: lightning_attn(q, k, v, slope, cu_seqlens=cu)}
    if fla_chunk is not None:
        cu64 = None if cu is None else cu.long()
        cands = {"fla chunk_simple_gla": lambda q, k, v: fla_chunk(
            q, k, v, g_gamma=-slope, scale=1.0, output_final_state=True, cu_seqlens=cu64), **cands}
    do = torch.randn_like(v)
    outs = {}
    for name, fn in cands.items():
        with torch.no_grad():
            outs[name] = fn(q, k, v)
            times = both(lambda fn=fn: fn(q, k, v))
        table.add(name, shape, "fwd", times, 4 * act + state_bytes, is_fla=name.startswith("fla"))
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]

        def fwd_bwd(fn=fn, leaves=leaves):
            o, _ = fn(*leaves)
            torch.autograd.grad(o, leaves, do)

        table.add(name, shape, "fwd+bwd", both(fwd_bwd), 11 * act, is_fla=name.startswith("fla"))
        del leaves
    if len(outs) == 2:
        (o_f, h_f), (o_o, h_o) = outs.values()
        print(f"{shape}: ours vs fla relative difference: o {rel_diff(o_o, o_f):.2e}, "
              f"final state {rel_diff(h_o, h_f):.2e}", flush=True)


ROTATE_BYTES = 256e6  # decode: states rotated over at least this many bytes (> L2) so each comes from HBM


def decode_sets(batch: int, heads: int, dim: int, v_major: bool = False) -> list[list[torch.Tensor]]:
    """Enough (q, k, v, state) sets (>= ROTATE_BYTES of states) that rotating over them reads each state from HBM;
    ``v_major``: each state a V-major view (decode.is_v_major) of a [B, H, V, K] tensor."""
    state_bytes = batch * heads * dim * dim * 4
    n_sets = max(2, math.ceil(ROTATE_BYTES / state_bytes))
    state = ((lambda: torch.randn(batch, heads, dim, dim, device="cuda").transpose(-1, -2)) if v_major
             else (lambda: torch.randn(batch, heads, dim, dim, device="cuda")))
    return [[F.silu(torch.randn(batch, heads, dim, device="cuda")).to(torch.bfloat16) for _ in range(3)]
            + [state()] for _ in range(n_sets)]


def rotating_times(step, sets, rep: int = 100) -> tuple[float, float]:
    """(event ms, do_bench ms) per call of step(*set), rotating over the sets."""
    def run():
        for args in sets:
            step(*args)
    ev = event_mean(run) / len(sets)
    it = iter(range(1 << 62))
    return ev, bench_median(lambda: step(*sets[next(it) % len(sets)]), rep)


def graph_times(step, sets, rep: int = 100, passes: int = 1) -> tuple[float, float]:
    """(event ms, do_bench ms) per call of step(*set) with one call per set (``passes`` times over the sets)
    captured in one CUDA graph (as the sampler engine replays its decode step): launches cost no host time and
    follow each other on the GPU; the graph's own launch is shared by len(sets) * passes calls."""
    def run():
        for _ in range(passes):
            for args in sets:
                step(*args)
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    calls = len(sets) * passes
    times = event_mean(graph.replay) / calls, bench_median(graph.replay, rep) / calls
    del graph
    return times


_EMPTY = None


def empty_launch():
    """A Triton kernel that does nothing (one program): the timers' floor for one launch."""
    global _EMPTY
    if _EMPTY is None:
        import triton

        @triton.jit
        def _empty(x):
            pass

        _EMPTY = _empty
    _EMPTY[(1,)](None)


def decode_rows(table: Table, batch: int, heads: int, dim: int, slope, fla_recurrent,
                chunk_form_sweep: bool = False) -> None:
    """Decode rows: states rotated over enough sets (>= 256 MB) that the state comes from HBM. Beside ours:
    an empty launch (the timers' floor) and torch's copy of the same state bytes (a plain stream of them)."""
    sets = decode_sets(batch, heads, dim)
    state_bytes = batch * heads * dim * dim * 4
    nbytes = 2 * state_bytes + 4 * batch * heads * dim * 2
    shape = f"B={batch}"
    ours = lambda q, k, v, s: lightning_attn_decode(q, k, v, slope, s)
    if fla_recurrent is not None:
        fla_step = lambda q, k, v, s: fla_recurrent(q[:, None], k[:, None], v[:, None], g_gamma=-slope,
                                                    scale=1.0, initial_state=s, output_final_state=True)
        table.add("fla fused_recurrent_simple_gla", shape, "decode", rotating_times(fla_step, sets), nbytes,
                  is_fla=True)
        q, k, v, state = sets[0]
        s_a, s_b = state.clone(), state.clone()
        o_a = ours(q, k, v, s_a)
        o_b, s_b = fla_step(q, k, v, s_b)
        print(f"decode {shape}: ours vs fla relative difference: o {rel_diff(o_a, o_b[:, 0]):.2e}, "
              f"state {rel_diff(s_a, s_b):.2e}", flush=True)
    table.add("ours decode (Triton)", shape, "decode", rotating_times(ours, sets), nbytes)
    table.add("ours decode, CUDA graph", shape, "decode", graph_times(ours, sets), nbytes)
    chunk_form_rows(table, batch, heads, dim, slope, sets, sweep=chunk_form_sweep)
    copies = [[s, torch.empty_like(s)] for *_, s in sets]
    copy = lambda src, dst: dst.copy_(src)
    table.add("torch copy_ of the state bytes", shape, "copy", rotating_times(copy, copies), 2 * state_bytes)
    table.add("torch copy_, CUDA graph", shape, "copy", graph_times(copy, copies), 2 * state_bytes)
    del copies
    nothing = [[] for _ in range(len(sets))]
    table.add("empty Triton launch", shape, "empty", rotating_times(empty_launch, nothing), 0)
    table.add("empty Triton launch, CUDA graph", shape, "empty", graph_times(empty_launch, nothing), 0)


def chunk_form_rows(table: Table, batch: int, heads: int, dim: int, slope, sets, block: int = 64,
                    sweep: bool = True) -> None:
    """The sampler's default lightning decode (decode.lightning_attn_decode_chunk_form, in a CUDA graph as the
    engine runs it), the default config first and with ``sweep`` every decode.CHUNK_FORM_SWEEP config, each
    reading the fp32 state or its rounded (bf16) copy (``rounded_state``), at a step inside a chunk
    (i = block / 2: reads the state and the chunk's first i keys and values) and at the chunk's last step
    (i = block - 1: the state is advanced and written too). Each row's bound is the bytes that step must move:
    inside a chunk the state read once (4 or 2 bytes per element) plus i rows of keys and values, q, k, v, o and
    the token's key and value written; at i = block - 1 the fp32 state read and written (and its copy written),
    and all block rows. Also printed: each variant's mean step (63 steps like i = 32, one chunk-completing) against
    the mean of the bounds."""
    from lightswe.kernels.lightning_attn import decode

    buffers = [[torch.randn(batch, heads, block, dim, device="cuda").to(torch.bfloat16) for _ in range(2)]
               + [s.to(torch.bfloat16)] for *_, s in sets]
    args = [[q, k, v, s, ck, cv, r] for (q, k, v, s), (ck, cv, r) in zip(sets, buffers, strict=True)]
    n_state = batch * heads * dim * dim
    default = next(c for lo, c in reversed(decode.CHUNK_FORM_CONFIGS) if batch * heads >= lo)
    configs = [default, *(c for c in decode.CHUNK_FORM_SWEEP if c != default and sweep)]
    mean_step = {}  # per (config, copy): (mean step do_bench ms, mean bound ms)
    for config in configs:
        for rounded in (True, False):
            for i in (block // 2, block - 1):
                pos = torch.full((batch,), i, device="cuda", dtype=torch.int64)
                step = (lambda q, k, v, s, ck, cv, r, pos=pos, config=config, rounded=rounded:
                        decode.lightning_attn_decode_chunk_form(q, k, v, slope, s, ck, cv, pos,
                                                                rounded_state=r if rounded else None, config=config))
                last = i == block - 1
                rows = block if last else i
                nbytes = (n_state * (8 + 2 * rounded if last else (2 if rounded else 4))
                          + rows * batch * heads * 2 * dim * 2 + 6 * batch * heads * dim * 2)
                name = (f"chunk-form i={i}, {'bf16 copy' if rounded else 'fp32 state'}, BV {config.bv}/"
                        f"{config.warps}w{f' BK {config.bk}' if config.bk else ''}"
                        f"{' TC' if config.mma else ''}{', split' if config.split else ''}"
                        f"{' (default)' if config == default else ''}")
                times = graph_times(step, args, rep=20)
                table.add(name, f"B={batch}", "graph", times, nbytes)
                weight = (block - 1 if not last else 1) / block
                t, bound = mean_step.get((config, rounded), (0.0, 0.0))
                mean_step[(config, rounded)] = (t + times[1] * weight, bound + nbytes / table.bandwidth * 1e3 * weight)
    for (config, rounded), (ms, bound) in sorted(mean_step.items(), key=lambda item: item[1][0]):
        print(f"chunk-form B={batch}: {config}, {'bf16 copy' if rounded else 'fp32 state'}: mean step "
              f"{ms * 1e3:.1f} us, its bound {bound * 1e3:.1f} us ({bound / ms:.1%}) (CUDA graph, do_bench)",
              flush=True)
    del buffers, args


def decode_check(sets, slope, config) -> tuple[float, float, bool]:
    """lightning_attn_decode_triton with ``config`` against the PyTorch step on the first state set (updated in
    place): (relative error of o, of the state, both within bounds: o < 1e-2, state < 1e-6)."""
    from lightswe.kernels.lightning_attn.decode import lightning_attn_decode_triton
    from lightswe.kernels.lightning_attn.naive import lightning_attn_decode_naive

    q, k, v, state = sets[0]
    s_ref = state.clone()
    o = lightning_attn_decode_triton(q, k, v, slope, state, config)
    o_ref = lightning_attn_decode_naive(q, k, v, slope, s_ref)
    err_o, err_state = rel_diff(o, o_ref), rel_diff(state, s_ref)
    return err_o, err_state, err_o < 1e-2 and err_state < 1e-6


def decode_verdict(sets, slope, config) -> str:
    """"ok", or what failed, of :func:`decode_check` (the launch study's and the ablation's check column)."""
    err_o, err_state, ok = decode_check(sets, slope, config)
    return "ok" if ok else f"FAILED o {err_o:.1e} state {err_state:.1e}"


def decode_graph_times(step, producer, args, passes: int, kernel: str) -> tuple[float, float, float, float]:
    """``step`` over the rotating ``args`` in CUDA graphs of ``passes`` x len(args) launches, ms per launch: (graph
    replay do_bench, the same with ``producer`` before every step, CUPTI mean duration of ``kernel``, CUPTI span)."""
    _, graph = graph_times(step, args, rep=30, passes=passes)
    both_steps = lambda *a: (producer(*a), step(*a))
    _, with_producer = graph_times(both_steps, args, rep=30, passes=passes)
    graph_obj = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph_obj):
        for _ in range(passes):
            for a in args:
                step(*a)
    kern, span = cupti_times(graph_obj.replay, kernel, len(args) * passes)  # "": every kernel (torch's)
    del graph_obj
    return graph, with_producer, kern, span


def decode_sweep(batches: list[int], heads: int, dim: int, slope, bandwidth: float) -> dict:
    """Every decode.DECODE_SWEEP config at each B: checked against the PyTorch step, then timed alone (do_bench,
    L2 flushed) and inside a CUDA graph (one launch per rotating state set); the best of each printed last.
    Returns {B: the config fastest in the CUDA graph}."""
    from lightswe.kernels.lightning_attn.decode import DECODE_SWEEP, lightning_attn_decode_triton

    print("\n| B | config | do_bench us | of bound | CUDA graph us | of bound | max rel. error (o, state) |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    best = {}
    for batch in batches:
        sets = decode_sets(batch, heads, dim)
        bound_us = (2 * batch * heads * dim * dim * 4 + 4 * batch * heads * dim * 2) / bandwidth * 1e6
        for config in DECODE_SWEEP:
            *err, ok = decode_check(sets, slope, config)
            step = lambda q, k, v, s, config=config: lightning_attn_decode_triton(q, k, v, slope, s, config)
            _, med = rotating_times(step, sets, rep=40)
            _, graph_med = graph_times(step, sets, rep=40)
            med, graph_med = med * 1e3, graph_med * 1e3
            print(f"| {batch} | {config} | {med:.1f} | {bound_us / med:.1%} | {graph_med:.1f} | "
                  f"{bound_us / graph_med:.1%} | {err[0]:.1e}, {err[1]:.1e}{'' if ok else ' FAILED'} |", flush=True)
            for timer, t in (("do_bench", med), ("graph", graph_med)):
                if ok and t < best.get((batch, timer), (float("inf"),))[0]:
                    best[(batch, timer)] = (t, config, bound_us / t)
        del sets
        torch.cuda.empty_cache()
    for (batch, timer), (t, config, frac) in sorted(best.items()):
        print(f"best B={batch} {timer}: {config} {t:.1f} us ({frac:.1%} of bound)", flush=True)
    return {batch: config for (batch, timer), (_, config, _) in best.items() if timer == "graph"}


def cupti_times(replay, kernel: str, launches: int) -> tuple[float, float]:
    """(mean kernel duration, span per launch) in ms from the CUDA profiler (CUPTI) over one ``replay()`` that
    launches ``launches`` kernels whose names contain ``kernel``: a kernel's own start-to-end time on the GPU
    (for a programmatic dependent launch it includes the wait for its predecessor), and the first such kernel's
    start to the last one's end divided by the launches (what one step costs back to back). NaN if the
    profiler records no such kernel."""
    from torch.profiler import ProfilerActivity, profile

    replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        replay()
        torch.cuda.synchronize()
    spans = [(e.time_range.start, e.time_range.end) for e in prof.events()
             if e.device_type == torch.autograd.DeviceType.CUDA and kernel in e.name]
    if len(spans) < launches:
        return float("nan"), float("nan")
    spans = sorted(spans)[-launches:]
    mean = sum(b - a for a, b in spans) / launches
    return mean * 1e-3, (spans[-1][1] - spans[0][0]) / launches * 1e-3


def _set_index(args, state) -> int:
    """Which rotating set ``state`` belongs to."""
    return next(i for i, a in enumerate(args) if a[3] is state)


def decode_launch_study(batches: list[int], heads: int, dim: int, slope, bandwidth: float,
                        chunk_form: bool = True, launches: int = 100) -> None:
    """Exact decode step (lightning_attn_decode_triton): launch variants at each B against the same-byte
    references, on four timers. Variants: the default of DECODE_CONFIGS plain and as a programmatic dependent
    launch (pdl 1: all loads after the wait; pdl 2: the state loaded before it); BV 64 / 8 warps, pdl 1 capped at
    64 registers; the same launch with the tile as 32-row sub-tiles (DecodeConfig.rows; also plain) and as 16-row
    sub-tiles capped at 64 registers; and with o's products before the tile's stores (benchmark kernel _tile,
    MODE 3). Then the V-major state (decode.is_v_major, _decode_v_major_kernel: states of the same values stored
    transposed): its default (V_MAJOR_DECODE_CONFIGS) and every V_MAJOR_DECODE_SWEEP launch with the default's pdl.
    References: torch's copy_ of the state bytes to another
    buffer and torch's in-place ``mul_`` of the state (the same bytes read and written in place). Timers (us per
    step): event = CUDA events around eager calls (host-bound at these sizes); alone = do_bench median with L2
    flushed, states rotated; graph = ``launches`` (100) steps over the rotating state sets captured in one CUDA
    graph (do_bench of the replay / steps); + producer = the same with a small kernel writing q before each step
    (the sampler's order: the layer's q/k/v kernel, then the step; the producer alone beside it); kernel / span =
    CUPTI over one replay of that graph: the kernel's own duration (a dependent launch's includes its wait) and
    the first step's start to the last one's end per step. With ``chunk_form`` also the sampler's chunk-form step
    (default config, i = 32, bf16 copy; its bound: see chunk_form_rows)."""
    from lightswe.kernels.lightning_attn.decode import (DECODE_CONFIGS, V_MAJOR_DECODE_CONFIGS, V_MAJOR_DECODE_SWEEP,
                                                         DecodeConfig, lightning_attn_decode_triton)

    print("\n| B | variant | event us (eager) | alone us (do_bench) | graph us | of bound | graph + producer us | "
          "producer alone us | kernel us (CUPTI) | span per launch us (CUPTI) | check |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for batch in batches:
        sets = decode_sets(batch, heads, dim)
        v_sets = decode_sets(batch, heads, dim, v_major=True)
        outs = [torch.empty_like(s) for *_, s in sets]
        state_bytes = batch * heads * dim * dim * 4
        bound_us = (2 * state_bytes + 4 * batch * heads * dim * 2) / bandwidth * 1e6
        default = next(c for lo, c in reversed(DECODE_CONFIGS) if batch * heads >= lo)
        plain = dataclasses.replace(default, pdl=0)
        # the default plain and with pdl 1 / 2; BV 64 / 8 warps, pdl 1 capped at 64 registers (4 programs per
        # multiprocessor instead of 3, 32 bytes of spills); the same launch with the tile loaded as 32-row
        # sub-tiles (64 registers without spills) and as 16-row sub-tiles capped at 64 registers
        variants = [dataclasses.replace(plain, pdl=n) for n in (0, 1, 2)]
        variants += [c for c in (DecodeConfig(64, 8, pdl=1, maxnreg=64), DecodeConfig(64, 8, pdl=1, rows=32),
                                 DecodeConfig(64, 8, rows=32), DecodeConfig(64, 8, pdl=1, rows=16, maxnreg=64))
                     if c not in variants]
        producer = lambda q, k, v, s, o: q.mul_(1)
        cases = []
        for config in variants:
            step = (lambda q, k, v, s, o, config=config: lightning_attn_decode_triton(q, k, v, slope, s, config))
            cases.append((f"{config}", step, "_decode_rows_kernel" if config.rows else "_decode_kernel", config,
                          bound_us))
        # the V-major state (decode.is_v_major): its default, then every V_MAJOR_DECODE_SWEEP launch with pdl 1
        v_default = next(c for lo, c in reversed(V_MAJOR_DECODE_CONFIGS) if batch * heads >= lo)
        for config in dict.fromkeys([v_default, *(c for c in V_MAJOR_DECODE_SWEEP if c.pdl == v_default.pdl)]):
            step = (lambda q, k, v, s, o, config=config: lightning_attn_decode_triton(q, k, v, slope, s, config))
            cases.append((f"V-major state: {config}", step, "_decode_v_major_kernel", config, bound_us))
        # BV 64 / 8 warps, pdl 1 with o's products before the tile's stores (the benchmark's _tile kernel, MODE 3)
        n_tiles = batch * heads * dim // 64
        reordered = (lambda q, k, v, s, o: _tile[(n_tiles,)](q, k, v, o, slope, s, s, H=heads, K=dim, V=dim, BV=64,
                                                             MODE=3, TRACE=False, PDL=1, num_warps=8, launch_pdl=True))
        cases.append(("BV 64, 8 warps, PDL 1, o's products before the tile's stores (72 registers)", reordered, "_tile",
                      None, bound_us))
        copy_bound = 2 * state_bytes / bandwidth * 1e6
        cases.append(("torch copy_ of the state bytes", lambda q, k, v, s, o: o.copy_(s), "", None, copy_bound))
        cases.append(("torch in-place mul_ of the state", lambda q, k, v, s, o: s.mul_(1.0), "", None, copy_bound))
        args = [[*st, o] for st, o in zip(sets, outs, strict=True)]
        v_args = [[*st, o] for st, o in zip(v_sets, outs, strict=True)]
        if chunk_form:  # the sampler's step at i = 32 reading the bf16 copy (the "out" slot holds its buffers)
            from lightswe.kernels.lightning_attn import decode

            block = 64
            cf_default = next(c for lo, c in reversed(decode.CHUNK_FORM_CONFIGS) if batch * heads >= lo)
            pos = torch.full((batch,), block // 2, device="cuda", dtype=torch.int64)
            cf_buffers = [[torch.randn(batch, heads, block, dim, device="cuda").to(torch.bfloat16) for _ in range(2)]
                          + [s.to(torch.bfloat16)] for *_, s in sets]
            n_state = batch * heads * dim * dim
            cf_bound = (2 * n_state + block // 2 * batch * heads * 2 * dim * 2 + 6 * batch * heads * dim * 2
                        ) / bandwidth * 1e6
            for n in (cf_default.pdl,):  # the default launch (its pdl 1 / 2: fourth session, RESULTS.md)
                config = dataclasses.replace(cf_default, pdl=n)
                step = (lambda q, k, v, s, o, config=config:
                        decode.lightning_attn_decode_chunk_form(q, k, v, slope, s, *cf_buffers[_set_index(args, s)][:2],
                                                                pos, rounded_state=cf_buffers[_set_index(args, s)][2],
                                                                config=config))
                cases.append((f"chunk form i=32, bf16 copy: {config}", step, "_decode_chunk_form_kernel", None, cf_bound))
        passes = math.ceil(launches / len(args))  # graphs of >= ``launches`` steps
        _, producer_graph = graph_times(producer, args, rep=20, passes=passes)
        for name, step, kernel, check, bound in cases:
            v_major = kernel == "_decode_v_major_kernel"
            verdict = "" if check is None else decode_verdict(v_sets if v_major else sets, slope, check)
            try:
                event, alone = rotating_times(step, v_args if v_major else args, rep=30)
                graph, with_producer, kern, span = decode_graph_times(step, producer, v_args if v_major else args,
                                                                      passes, kernel)
            except Exception as err:  # one variant failing (e.g. capture) must not lose the others' rows
                print(f"| {batch} | {name} | FAILED: {type(err).__name__}: {err} |", flush=True)
                continue
            us = [t * 1e3 for t in (event, alone, graph, with_producer, producer_graph, kern, span)]
            print(f"| {batch} | {name} | {us[0]:.1f} | {us[1]:.1f} ({bound / us[1]:.1%}) | {us[2]:.1f} | "
                  f"{bound / us[2]:.1%} | {us[3]:.1f} | {us[4]:.1f} | {us[5]:.1f} | {us[6]:.1f} "
                  f"({bound / us[6]:.1%}) | {verdict} |", flush=True)
        print(f"B={batch}: bound {bound_us:.1f} us (fp32 state read + written, q, k, v, o); copy_ / mul_ rows "
              f"against the state bytes alone, {copy_bound:.1f} us" + (f"; chunk form i=32 against its own bytes, "
                                                                       f"{cf_bound:.1f} us" if chunk_form else ""),
              flush=True)
        args.clear()  # (cleared, not deleted: the chunk-form steps' closures name it)
        del sets, v_sets, v_args, outs, cases
        if chunk_form:
            del cf_buffers
        torch.cuda.empty_cache()


try:  # the ablation kernels of decode_ablation (CUDA only; the module also serves --rounding-emulation on CPU)
    import triton
    import triton.language as tl
    from lightswe.kernels.lightning_attn import decode as _decode
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def _stamp():
        """%globaltimer (ns)."""
        return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False,
                                         pack=1)

    @triton.jit
    def _flat_mul(x, scale, BLOCK: tl.constexpr):
        """x[program's BLOCK elements] *= scale, in place (as torch's mul_)."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x + offs, tl.load(x + offs) * scale)

    @triton.jit
    def _tile(q, k, v, o, slope, state, trace, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
              BV: tl.constexpr, MODE: tl.constexpr, TRACE: tl.constexpr, PDL: tl.constexpr):
        """The exact step's grid and [K, BV] tiles (decode._decode_kernel's), taken apart: MODE 0 the tile scaled
        by exp(-slope) and stored (no q, k, v, o); 1 S = lambda S + k^T v stored (no o); 2 the step itself
        (decode._load_tile + decode._decode_tile: the tile's stores, then o's products); 3 the step with o's
        products before the tile's stores (tried in the fifth session: 72 instead of 80 registers at BV 64 / 8
        warps, the same bits as 2, the stores waiting for o's cross-warp sum).
        TRACE: each program writes its start and end (%globaltimer ns, the end after its last store) and %smid to
        trace[4 program + 0..2]. PDL: as decode's pdl 1."""
        t = tl.program_id(0)
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        if TRACE:
            t0 = _stamp()
        if MODE == 2:
            s_tile = _decode._load_tile(state, t, 0, K, V, BV, False, False)
            _decode._decode_tile(q, k, v, o, slope, state, s_tile, t, 0, H, K, V, BV, False, False)
        else:
            p_s, i_bh, o_k, o_v = _decode._tile_ptrs(state, t, K, V, BV)
            b_s = tl.load(p_s)
            decay = tl.exp(-tl.load(slope + i_bh % H))
            if MODE == 3:  # o's products (a sum across warps) before the tile's stores
                b_q = tl.load(q + i_bh * K + o_k).to(tl.float32)
                b_k = tl.load(k + i_bh * K + o_k).to(tl.float32)
                b_v = tl.load(v + i_bh * V + o_v).to(tl.float32)
                b_s = b_s * decay + b_k[:, None] * b_v[None, :]
                b_o = tl.sum(b_q[:, None] * b_s, axis=0).to(o.dtype.element_ty)
                tl.store(p_s, b_s)
                tl.store(o + i_bh * V + o_v, b_o)
            else:
                if MODE == 0:
                    b_s = b_s * decay
                else:
                    b_k = tl.load(k + i_bh * K + o_k).to(tl.float32)
                    b_v = tl.load(v + i_bh * V + o_v).to(tl.float32)
                    b_s = b_s * decay + b_k[:, None] * b_v[None, :]
                tl.store(p_s, b_s)
        if TRACE:
            t1 = _stamp()
            sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)
            tl.store(trace + t * 4, t0)
            tl.store(trace + t * 4 + 1, t1)
            tl.store(trace + t * 4 + 2, sm.to(tl.int64))


def _timeline(trace: torch.Tensor, program_bytes: float, bin_ns: int = 1000) -> str:
    """One step's program timeline from _tile's TRACE stamps ([programs, 4] int64: start, end ns, SM): span,
    rounds per SM, when the last program starts, and per bin of ``bin_ns`` the programs running and the
    DRAM rate implied by the programs ending in it (each moves ``program_bytes``)."""
    t = trace.cpu()
    start, end, sm = t[:, 0], t[:, 1], t[:, 2]
    t0 = int(start.min())
    start, end = start - t0, end - t0
    span = int(end.max())
    per_sm = torch.bincount(sm, minlength=int(sm.max()) + 1)
    life = (end - start).float()
    nonzero = torch.diff(torch.unique(torch.cat([start, end]))).min().item() if len(start) > 1 else 0
    lines = [f"span {span / 1e3:.2f} us (first start to last end), programs per SM {int(per_sm.min())}-"
             f"{int(per_sm.max())}, last start {int(start.max()) / 1e3:.2f} us, program life mean {life.mean() / 1e3:.2f}"
             f" / min {life.min() / 1e3:.2f} / max {life.max() / 1e3:.2f} us, timer step {nonzero} ns"]
    bins = []
    for b0 in range(0, span + 1, bin_ns):
        running = int(((start < b0 + bin_ns) & (end > b0)).sum())
        ended = int(((end >= b0) & (end < b0 + bin_ns)).sum())
        bins.append(f"{running}/{ended * program_bytes / bin_ns / 1e3:.2f}")
    lines.append(f"per {bin_ns / 1e3:g} us: programs running / TB/s ended: " + " ".join(bins))
    return "\n".join(lines)


# launch shapes decode_ablation and decode_ncu_target measure beside the default (decode.DECODE_SWEEP has them, so
# the GPU tests check each against the reference)
ABLATION_CANDIDATES = tuple(_decode.DecodeConfig(*a, **kw) for a, kw in (
    ((64, 8), dict(pdl=1, rows=32)), ((64, 8), dict(rows=32)), ((64, 8), dict(pdl=1, rows=16, maxnreg=64)),
    ((64, 8), dict(pdl=1, maxnreg=64)), ((64, 8), dict(pdl=2)))
) if triton is not None else ()


def decode_ablation(batch: int, heads: int, dim: int, slope, bandwidth: float, candidates=(),
                    launches: int = 100) -> None:
    """Where the exact step loses against torch's in-place mul_ of the same bytes (dec4: ~2 us per launch at B=8,
    a fixed cost: ours 3.7 us + 16.1 us per 8 B, mul_ 2.1 + 15.8). The step taken apart, each in the same graph of
    ``launches`` steps over the rotating state sets, timed as in decode_launch_study (graph, + producer, CUPTI kernel
    / span): torch mul_; Triton 1-D flat mul (2,048 fp32 per program, 4 warps; 8,192 per program, 8 warps); the
    step's grid with the tile only scaled (no q, k, v, o), with the update but no o, the step with o's products
    before the tile's stores (_tile MODE 3), plain and as a dependent launch; the default (DECODE_CONFIGS) plain
    and as it launches; then ``candidates`` (DecodeConfigs of lightning_attn_decode_triton, checked against the
    reference). Then the program timelines (_timeline) of one step in the middle of the graph: the tile scale, the
    default (through _tile MODE 2) and MODE 3, both as dependent launches."""
    from lightswe.kernels.lightning_attn.decode import DECODE_CONFIGS, lightning_attn_decode_triton

    flat_mul, tile = _flat_mul, _tile
    sets = decode_sets(batch, heads, dim)
    outs = [torch.empty_like(v) for _, _, v, _ in sets]
    args = [[*st, o] for st, o in zip(sets, outs, strict=True)]
    state_bytes = batch * heads * dim * dim * 4
    bound_us = (2 * state_bytes + 4 * batch * heads * dim * 2) / bandwidth * 1e6
    default = next(c for lo, c in reversed(DECODE_CONFIGS) if batch * heads >= lo)
    bv, warps = default.bv, default.warps
    n_tiles = batch * heads * dim // bv
    none = torch.empty(4, device="cuda", dtype=torch.int64)

    def tiled(mode, pdl=0, trace=None, maxnreg=0):
        extra = {"maxnreg": maxnreg} if maxnreg else {}
        return (lambda q, k, v, s, o: tile[(n_tiles,)](q, k, v, o, slope, s, none if trace is None else trace, H=heads,
                                                       K=dim, V=dim, BV=bv, MODE=mode, TRACE=trace is not None,
                                                       PDL=pdl, num_warps=warps, launch_pdl=pdl > 0, **extra))

    flat = lambda block, w: (lambda q, k, v, s, o: flat_mul[(s.numel() // block,)](s, 1.0, BLOCK=block, num_warps=w))
    cases = [("torch in-place mul_", lambda q, k, v, s, o: s.mul_(1.0), "elementwise", None),
             ("Triton flat mul, 2,048 fp32 / 4 warps", flat(2048, 4), "_flat_mul", None),
             ("Triton flat mul, 8,192 fp32 / 8 warps", flat(8192, 8), "_flat_mul", None),
             (f"step's grid, tile scaled only (BV {bv}, {warps} warps)", tiled(0), "_tile", None),
             ("step's grid, update, no o", tiled(1), "_tile", None),
             ("o's products before the tile's stores (72 registers)", tiled(3), "_tile", None),
             ("the same, PDL 1", tiled(3, 1), "_tile", None)]
    for config in (dataclasses.replace(default, pdl=0), default, *candidates):
        step = lambda q, k, v, s, o, config=config: lightning_attn_decode_triton(q, k, v, slope, s, config)
        cases.append((str(config), step, "_decode_rows_kernel" if config.rows else "_decode_kernel", config))
    passes = math.ceil(launches / len(args))
    producer = lambda q, k, v, s, o: q.mul_(1)
    print(f"\n### B={batch} ablation: bound {bound_us:.1f} us (state bytes alone {2 * state_bytes / bandwidth * 1e6:.1f} us)"
          "\n| case | graph us | of bound | graph + producer us | kernel us (CUPTI) | span per launch us (CUPTI) | check |"
          "\n|---|---|---|---|---|---|---|", flush=True)
    for name, step, kernel, config in cases:
        try:
            verdict = "" if config is None else decode_verdict(sets, slope, config)
            graph, with_producer, kern, span = decode_graph_times(step, producer, args, passes, kernel)
        except Exception as err:  # one case failing must not lose the others' rows
            print(f"| {name} | FAILED: {type(err).__name__}: {str(err)[:200]} |", flush=True)
            continue
        us = [t * 1e3 for t in (graph, with_producer, kern, span)]
        print(f"| {name} | {us[0]:.1f} | {bound_us / us[0]:.1%} | {us[1]:.1f} | {us[2]:.1f} | {us[3]:.1f} | {verdict} |",
              flush=True)
    program_bytes = 2 * dim * bv * 4
    for name, mode, pdl, cap in (("tile scaled only", 0, 0, 0), (f"the step ({default})", 2, default.pdl,
                                                                  default.maxnreg),
                                 ("o's products before the tile's stores, PDL 1", 3, 1, 0)):
        try:
            traces = [torch.zeros(n_tiles, 4, device="cuda", dtype=torch.int64) for _ in range(passes * len(args))]
            graph_obj = torch.cuda.CUDAGraph()
            it = iter(traces)
            for a in args:  # compile outside the capture
                tiled(mode, pdl, traces[0], cap)(*a)
            torch.cuda.synchronize()
            with torch.cuda.graph(graph_obj):
                for _ in range(passes):
                    for a in args:
                        tiled(mode, pdl, next(it), cap)(*a)
            for _ in range(3):
                graph_obj.replay()
            torch.cuda.synchronize()
            mid = len(traces) // 2
            print(f"timeline B={batch}, {name} (step {mid} of {len(traces)} in the graph): "
                  + _timeline(traces[mid], program_bytes), flush=True)
            gaps = [(int(traces[i + 1][:, 0].min()) - int(traces[i][:, 1].max())) / 1e3 for i in range(mid - 5, mid + 5)]
            spans = [(int(traces[i][:, 1].max()) - int(traces[i][:, 0].min())) / 1e3 for i in range(mid - 5, mid + 5)]
            print(f"  steps {mid - 5}..{mid + 4}: span us {' '.join(f'{x:.2f}' for x in spans)}; last end to the next "
                  f"step's first start us {' '.join(f'{x:.2f}' for x in gaps)}", flush=True)
            del graph_obj, traces
        except Exception as err:
            print(f"timeline {name} FAILED: {type(err).__name__}: {str(err)[:300]}", flush=True)
    args.clear()
    del sets, outs
    torch.cuda.empty_cache()


def decode_ncu_target(batch: int, heads: int, dim: int, slope, candidates=()) -> None:
    """For Nsight Compute (``ncu --profile-from-start off``): each kernel of decode_ablation launched once on a
    state set of its own between cudaProfilerStart/Stop, after a warm-up launch (its compile) outside them: torch's
    in-place mul_, the flat Triton mul, the step's grid with the tile scaled only, the step plain and as a
    dependent launch, then ``candidates``."""
    from lightswe.kernels.lightning_attn.decode import DECODE_CONFIGS, lightning_attn_decode_triton

    sets = decode_sets(batch, heads, dim)
    default = next(c for lo, c in reversed(DECODE_CONFIGS) if batch * heads >= lo)
    n_tiles = batch * heads * dim // default.bv
    steps = [lambda q, k, v, s: s.mul_(1.0),
             lambda q, k, v, s: _flat_mul[(s.numel() // 2048,)](s, 1.0, BLOCK=2048, num_warps=4),
             lambda q, k, v, s: _tile[(n_tiles,)](q, k, v, v, slope, s, s, H=heads, K=dim, V=dim, BV=default.bv, MODE=0,
                                                  TRACE=False, PDL=0, num_warps=default.warps)]
    steps += [lambda q, k, v, s, c=c: lightning_attn_decode_triton(q, k, v, slope, s, c)
              for c in (dataclasses.replace(default, pdl=0), default, *candidates)]
    for step in steps:
        step(*sets[0])
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for i, step in enumerate(steps):
        step(*sets[1 + i % (len(sets) - 1)])
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def _sweep_launch(kind: str, config, q, k, v, slope, cu, do=None, in_order: bool = False):
    """One launch of the forward or backward kernel with exactly `config` (no autotuning). Returns the outputs.
    in_order: packed sequences' programs in their given order instead of longest first (chunk._seq_order)."""
    from lightswe.kernels.lightning_attn import chunk

    _, T, H, K = q.shape
    V = v.shape[-1]
    N = q.shape[0] if cu is None else cu.numel() - 1
    opts = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    if config.maxnreg is not None:
        opts["maxnreg"] = config.maxnreg
    chunk._set_tma_allocator()
    order = chunk._seq_order(cu)
    if in_order and cu is not None:
        order = torch.arange(N, device=cu.device, dtype=torch.int32)
    if kind == "fwd":
        o, ht = torch.empty_like(v), q.new_empty(N, H, K, V, dtype=torch.float32)
        if config.kwargs.get("GLUON"):  # the Gluon forward (chunk.GLUON_SWEEP)
            chunk._launch_gluon_fwd(config.kwargs["BV"], q, k, v, o, slope, None, ht, cu, order, T, N, H, K, V, True)
            return o, ht
        grid = (triton_cdiv(V, config.kwargs["BV"]), N * H)
        chunk._fwd_kernel.fn[grid](q, k, v, o, slope, None, ht, cu, order, T=T, NB=N * H, H=H, K=K, V=V,
                                   USE_H0=False, STORE_HT=True, IS_VARLEN=cu is not None, **config.kwargs, **opts)
        return o, ht
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    grid = (2 * triton_cdiv(K, config.kwargs["BK"]) + triton_cdiv(V, config.kwargs["BV"]), N * H)
    chunk._bwd_kernel.fn[grid](q, k, v, do, dq, dk, dv, slope, None, None, None, cu, order, T=T, NB=N * H, H=H,
                               K=K, V=V, USE_H0=False, USE_DHT=False, STORE_DH0=False, IS_VARLEN=cu is not None,
                               **config.kwargs, **opts)
    return dq, dk, dv


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _config_list(kind: str, sweep: bool) -> list:
    from lightswe.kernels.lightning_attn import chunk

    if kind == "fwd":  # the Gluon forward (runs instead of the autotuned set where it applies) with either list
        return chunk.FWD_SWEEP if sweep else chunk._fwd_kernel.configs + chunk.GLUON_SWEEP
    return chunk.BWD_SWEEP if sweep else chunk._bwd_kernel.configs


def _sweep_compile_worker(jobs: list[tuple[str, bool, int, bool]], heads: int = 64, dim: int = 128) -> list[str]:
    """Compile (and check against the fp32 reference on a small input) the given (kind, from the sweep list,
    config index, varlen) jobs; specialisations match the timed shapes (T, N*H multiples of 16, no initial
    state, no final-state gradient). The compiled kernels land in Triton's on-disk cache, where the timing
    process (and its autotuner) finds them. Returns one line per job."""
    from lightswe.kernels.lightning_attn.naive import lightning_attn_chunked

    lines = []
    torch.manual_seed(0)
    H, D, T = heads, dim, 320
    slope = slopes(H)
    q, k, v, do = (F.silu(torch.randn(1, T, H, D, device="cuda")).to(torch.bfloat16) for _ in range(4))
    leaves = [x.float().requires_grad_() for x in (q, k, v)]
    o_ref = torch.cat([lightning_attn_chunked(*(x[:, a:b] for x in leaves), slope)[0]
                       for a, b in ((0, 100), (100, T))], 1)
    grads = torch.autograd.grad(o_ref, leaves, do.float())
    o_ref_b = lightning_attn_chunked(*leaves, slope)[0]
    grads_b = torch.autograd.grad(o_ref_b, leaves, do.float())
    firsts = {}
    for kind, sweep, index, varlen in jobs:
        config = _config_list(kind, sweep)[index]
        cu = torch.tensor([0, 100, T], device="cuda", dtype=torch.int32) if varlen else None
        try:
            out = _sweep_launch(kind, config, q, k, v, slope, cu, do)
            refs = ((o_ref if varlen else o_ref_b),) if kind == "fwd" else (grads if varlen else grads_b)
            err = max(rel_diff(a, b) for a, b in zip(out, refs))
            if (kind, varlen) not in firsts:  # the autotuned set's first config: the rounding every config keeps
                firsts[kind, varlen] = _sweep_launch(kind, _config_list(kind, False)[0], q, k, v, slope, cu, do)
            same = all(torch.equal(a, b) for a, b in zip(out, firsts[kind, varlen]))
            lines.append(f"{kind} {index} {config} varlen={varlen}: max rel. error vs fp32 {err:.2e}, "
                         f"{'bits equal to' if same else 'bits differ from'} autotuned config 0"
                         f"{' FAILED' if not err < 2e-2 else ''}")
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is reported, not fatal
            lines.append(f"{kind} {index} varlen={varlen} FAILED {type(exc).__name__}: {str(exc)[:300]}")
    return lines


def _fla_tuners() -> dict:
    """fla's Triton autotuners (imported modules only), by id."""
    import sys

    from triton.runtime.autotuner import Autotuner

    return {id(obj): obj for name, mod in list(sys.modules.items()) if name.startswith("fla.") and mod
            for obj in vars(mod).values() if isinstance(obj, Autotuner)}


def _fla_compile_worker(index: int, count: int, heads: int, dim: int, batch: int = 1) -> list[str]:
    """Compile the index-th of `count` slices of every fla autotuner's configs (chunk_simple_gla forward and
    backward, padded and packed inputs): fla tunes ~300 configs one compile at a time, which the timing
    process then finds in Triton's on-disk cache. Here each config runs once, untimed (no autotune result is
    recorded); the timing process tunes over all of them, so fla's choice is its own. `batch`: the padded
    input's batch size, that of the shape fla tunes on (one of its backward kernels takes B as a constant)."""
    from fla.ops.simple_gla import chunk_simple_gla

    tuners = _fla_tuners()
    for tuner in tuners.values():
        tuner._all_configs = getattr(tuner, "_all_configs", tuner.configs)  # a reused process: slice the full list
        tuner.configs = tuner._all_configs[index::count] or tuner._all_configs[index % len(tuner._all_configs):][:1]
        tuner.cache = {}
        tuner.cache_results = False
        tuner.__dict__["do_bench"] = lambda kernel_call, quantiles: (kernel_call(), [1.0, 1.0, 1.0])[1]
    slope = slopes(heads)
    T = 320
    for cu in (None, torch.tensor([0, 100, T], device="cuda", dtype=torch.int64)):
        b = batch if cu is None else 1
        q, k, v, do = (F.silu(torch.randn(b, T, heads, dim, device="cuda")).to(torch.bfloat16) for _ in range(4))
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        o, _ = chunk_simple_gla(*leaves, g_gamma=-slope, scale=1.0, output_final_state=True, cu_seqlens=cu)
        torch.autograd.grad(o, leaves, do)
    torch.cuda.synchronize()
    return [f"fla slice {index}/{count}: {sum(len(t.configs) for t in tuners.values())} configs of "
            f"{len(tuners)} autotuned kernels compiled"] if index == 0 else []


def tune_fla(fla_chunk, args, slope) -> None:
    """fla's chunk_simple_gla forward and forward+backward once on the table's first fixed-length input and on the
    packed batch, the inputs prefill_rows makes, so that fla's autotuners time all their configs now and record
    their picks on disk (cache_results, in TRITON_CACHE_DIR). Its tuning keys leave out the length, so a table
    run in the same call reuses exactly the picks its own first call would make, without the ~300 timings
    (--compile-only; pair with --pack-triton-cache to carry them into a later call)."""
    import time

    H, D = args.heads, args.dim
    cases = [(max(1, args.tokens // args.lengths[0]), args.lengths[0], None)] if args.lengths else []
    if not args.no_varlen:
        bounds = varlen_bounds(64, args.tokens)
        cases.append((1, bounds[-1], torch.tensor(bounds, device="cuda", dtype=torch.int64)))
    for batch, length, cu in cases:
        start = time.perf_counter()
        q, k, v = (F.silu(torch.randn(batch, length, H, D, device="cuda")).to(torch.bfloat16) for _ in range(3))
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        o, _ = fla_chunk(*leaves, g_gamma=-slope, scale=1.0, output_final_state=True, cu_seqlens=cu)
        torch.autograd.grad(o, leaves, torch.randn_like(o))
        torch.cuda.synchronize()
        print(f"fla tuned on B={batch} T={length}{' packed' if cu is not None else ''} in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        del q, k, v, leaves, o
    for tuner in _fla_tuners().values():
        for key, config in tuner.cache.items():
            print(f"fla tuned {tuner.base_fn.__name__} {key}: {config}", flush=True)


def compile_in_parallel(jobs: list[tuple[str, bool, int, bool]], workers: int, heads: int, dim: int,
                        fla: bool = False, fla_batch: int = 1) -> None:
    """Run _sweep_compile_worker over the jobs (and, with fla, every slice of fla's autotuned configs) in
    `workers` spawned processes (Triton compiles one kernel at a time per process; its cache is shared on disk)
    and print their lines."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        tasks = [pool.submit(_sweep_compile_worker, jobs[i::workers], heads, dim) for i in range(workers)]
        if fla:
            tasks += [pool.submit(_fla_compile_worker, i, workers, heads, dim, fla_batch) for i in range(workers)]
        for task in tasks:
            try:
                lines = task.result()
            except Exception as exc:  # noqa: BLE001 - the timing process then compiles what is missing
                lines = [f"compile worker FAILED {type(exc).__name__}: {str(exc)[:300]}"]
            if lines:
                print("\n".join(lines), flush=True)


def prefill_sweep(lengths: list[int], tokens: int, heads: int, dim: int, slope, bandwidth: float,
                  workers: int = 16, kinds: tuple[str, ...] = ("fwd", "bwd"), varlen: bool = True,
                  autotuned_only: bool = False) -> None:
    """Every chunk.FWD_SWEEP and/or chunk.BWD_SWEEP config, compiled in parallel worker processes and checked
    against the fp32 reference and for bit equality with the autotuned set's first config, then timed alone
    (CUDA events and do_bench) at each length and on the packed batch; the fastest per shape printed.
    autotuned_only: only the autotuned sets (chunk._fwd_kernel.configs / _bwd_kernel.configs)."""
    from lightswe.kernels.lightning_attn import chunk

    varlens = [False, True] if varlen else [False]
    compile_in_parallel([(kind, not autotuned_only, i, vl) for kind in kinds for vl in varlens
                         for i in range(len(_config_list(kind, not autotuned_only)))], workers, heads, dim)
    print("\n| kind | shape | config | event ms | do_bench ms | of bound |\n|---|---|---|---|---|---|", flush=True)
    best = {}
    cases = [(f"B={max(1, tokens // t)} T={t}", max(1, tokens // t), t, None) for t in lengths]
    if varlen:
        bounds = varlen_bounds(64, tokens)
        cases.append((f"varlen 64 seqs {bounds[-1]}", 1, bounds[-1],
                      torch.tensor(bounds, device="cuda", dtype=torch.int32)))
    for shape, batch, length, cu in cases:
        q, k, v, do = (F.silu(torch.randn(batch, length, heads, dim, device="cuda")).to(torch.bfloat16)
                       for _ in range(4))
        act = q.numel() * 2
        n_seqs = batch if cu is None else cu.numel() - 1
        for kind in kinds:
            lst = _config_list(kind, not autotuned_only)
            kept = chunk._prune_slices(lst, {}, K=dim, V=dim, NB=n_seqs * heads)
            nbytes = 4 * act + n_seqs * heads * dim * dim * 4 if kind == "fwd" else 7 * act
            # packed batch: the autotuned configs also with the sequences in their given order (A/B of longest-first)
            runs = [(c, False) for c in kept] + ([(c, True) for c in kept if c in _config_list(kind, False)]
                                                 if cu is not None else [])
            for config, in_order in runs:
                index = lst.index(config)
                call = lambda kind=kind, config=config, q=q, k=k, v=v, do=do, cu=cu, in_order=in_order: (
                    _sweep_launch(kind, config, q, k, v, slope, cu, do, in_order))
                label = f"{index} {config}{', sequences in given order' if in_order else ''}"
                try:
                    ev, ms = event_mean(call), bench_median(call, rep=30)
                except Exception as exc:  # noqa: BLE001
                    print(f"| {kind} | {shape} | {label} | FAILED {type(exc).__name__} | | |", flush=True)
                    continue
                bound = nbytes / bandwidth * 1e3
                print(f"| {kind} | {shape} | {label} | {ev:.4f} | {ms:.4f} | {bound / ms:.1%} |", flush=True)
                if ms < best.get((kind, shape), (float("inf"),))[0] and not in_order:
                    best[(kind, shape)] = (ms, index, str(config))
        del q, k, v, do
        torch.cuda.empty_cache()
    for (kind, shape), (ms, index, config) in best.items():
        print(f"best {kind} {shape}: {ms:.4f} ms, config {index} {config}", flush=True)


def rounding_emulation(heads: int = 8, dim: int = 128, length: int = 1024, block: int = 64) -> None:
    """CPU, fp64: the chunk forward's two roundings of its bf16 operands against each other and the unrounded
    result. "mirror": round(q lambda^(i+1)) round(S) and round(k lambda^(BT-1-j))^T v (the configs without
    DECAY_OUT, now only in the sweep lists); "decay_out": (q round(S)) lambda^(i+1) and k^T round(v lambda^...)
    (every autotuned config since round 3, and what decode.py's chunk-form step reproduces).
    Both round the in-chunk scores. Prints relative differences of o and the final state, and the share of
    bf16 outputs that differ."""
    gen = torch.Generator().manual_seed(0)
    rnd = lambda x: x.to(torch.bfloat16).double()
    slope = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)], dtype=torch.float64)
    q, k, v = (rnd(F.silu(torch.randn(heads, length, dim, generator=gen, dtype=torch.float64))) for _ in range(3))
    pos = torch.arange(block, dtype=torch.float64)
    lam = slope[:, None, None]
    mask = torch.exp(-lam * (pos[:, None] - pos[None, :]).clamp(min=0)) * (pos[:, None] >= pos[None, :])
    q_decay, k_decay = torch.exp(-lam * (pos[:, None] + 1)), torch.exp(-lam * (block - 1 - pos[:, None]))

    def run(mode: str):
        r = (lambda x: x) if mode == "exact" else rnd
        state, outs = torch.zeros(heads, dim, dim, dtype=torch.float64), []
        for s in range(0, length, block):
            qb, kb, vb = q[:, s:s + block], k[:, s:s + block], v[:, s:s + block]
            intra = r((qb @ kb.transpose(1, 2)) * mask) @ vb
            if mode == "decay_out":
                outs.append((qb @ r(state)) * q_decay + intra)
                state = torch.exp(-lam * block) * state + kb.transpose(1, 2) @ r(vb * k_decay)
            else:
                outs.append(r(qb * q_decay) @ r(state) + intra)
                state = torch.exp(-lam * block) * state + r(kb * k_decay).transpose(1, 2) @ vb
        return torch.cat(outs, 1), state

    res = {mode: run(mode) for mode in ("exact", "mirror", "decay_out")}
    for a, b in (("mirror", "exact"), ("decay_out", "exact"), ("decay_out", "mirror")):
        (o_a, s_a), (o_b, s_b) = res[a], res[b]
        differ = (o_a.to(torch.bfloat16) != o_b.to(torch.bfloat16)).double().mean().item()
        print(f"{a} vs {b}: o {rel_diff(o_a, o_b):.2e}, final state {rel_diff(s_a, s_b):.2e}, "
              f"bf16 outputs differing {differ:.1%}", flush=True)


def pack_triton_cache(prefix: str, part_bytes: int = 15 * 2**20) -> None:
    """Write Triton's on-disk cache (TRITON_CACHE_DIR: every compiled kernel's binary and metadata, and the
    autotuners' recorded timings, which fla's kernels keep with cache_results) as an xz tar in parts
    prefix.0, prefix.1, ... of at most part_bytes each; the IR files are left out (not needed to load a kernel).
    Carried into the next run and unpacked there (--unpack-triton-cache), fla's ~300 autotune configs are
    neither compiled nor timed again: its kernels run the configs its own autotuner picked in the first run."""
    import io
    import pathlib
    import tarfile

    import triton

    root = pathlib.Path(triton.knobs.cache.dir)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in (".json", ".cubin"):
                tar.add(path, arcname=str(path.relative_to(root)))
    data = buf.getvalue()
    for i in range(0, max(1, -(-len(data) // part_bytes))):
        pathlib.Path(f"{prefix}.{i}").write_bytes(data[i * part_bytes:(i + 1) * part_bytes])
    print(f"packed {root} into {-(-len(data) // part_bytes)} part(s) of {prefix}: {len(data) / 2**20:.1f} MiB",
          flush=True)


def unpack_triton_cache(prefix: str) -> None:
    """Extract pack_triton_cache's parts into TRITON_CACHE_DIR, pointing its group files at the new place (Triton
    records absolute paths). Missing parts: a message, and the run compiles and tunes as usual."""
    import io
    import json
    import pathlib
    import tarfile

    import triton

    parts = sorted(pathlib.Path(prefix).parent.glob(pathlib.Path(prefix).name + ".*"),
                   key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else -1)
    parts = [p for p in parts if p.suffix[1:].isdigit()]
    if not parts:
        print(f"no Triton cache parts at {prefix}.*: compiling and tuning from scratch", flush=True)
        return
    root = pathlib.Path(triton.knobs.cache.dir)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:xz") as tar:
        tar.extractall(root, filter="data")
    for group in root.glob("*/__grp__*.json"):
        data = json.loads(group.read_text())
        data["child_paths"] = {name: str(group.parent / name) for name in data.get("child_paths", {})}
        group.write_text(json.dumps(data))
    print(f"unpacked {len(parts)} part(s) of {prefix} into {root}", flush=True)


def varlen_bounds(n_seqs: int, total: int, seed: int = 0) -> list[int]:
    """cu_seqlens of n_seqs lengths summing to total, each within [0.5, 1.5] x the mean (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    weights = 0.5 + torch.rand(n_seqs, generator=gen, dtype=torch.float64)
    lengths = (weights / weights.sum() * total).floor().long()
    lengths[-1] += total - lengths.sum()
    return [0, *torch.cumsum(lengths, 0).tolist()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--lengths", type=int, nargs="*", default=[2048, 8192, 32768, 65536])
    parser.add_argument("--no-varlen", action="store_true", help="skip the packed batch (64 sequences)")
    parser.add_argument("--decode-batches", type=int, nargs="*", default=[8, 16, 32, 64])
    parser.add_argument("--decode-sweep", action="store_true",
                        help="time every exact decode launch config (decode.DECODE_SWEEP) at each --decode-batches B")
    parser.add_argument("--decode-launch", action="store_true",
                        help="the exact decode step's launch study (programmatic dependent launch, in place vs a "
                             "separate output state, copy_ / in-place mul_ references; four timers incl. CUPTI)")
    parser.add_argument("--decode-ablation", action="store_true",
                        help="the exact decode step taken apart against torch's mul_ (decode_ablation), candidate "
                             "configs, program timelines, at each --decode-batches B")
    parser.add_argument("--ablation-batches", type=int, nargs="*", default=None,
                        help="--decode-ablation at these B instead of --decode-batches")
    parser.add_argument("--decode-ncu-target", action="store_true",
                        help="launch decode_ablation's kernels once each at the first --decode-batches B between "
                             "cudaProfilerStart/Stop (run under ncu --profile-from-start off), then exit")
    parser.add_argument("--chunk-form-sweep", action="store_true",
                        help="time every chunk-form decode config (decode.CHUNK_FORM_SWEEP), not only the default")
    parser.add_argument("--prefill-sweep", action="store_true",
                        help="time every chunk.FWD_SWEEP / BWD_SWEEP config alone at each --lengths T, then exit")
    parser.add_argument("--compile-workers", type=int, default=16,
                        help="compile every autotuned prefill config (ours and fla's) in this many processes first "
                             "(0: off)")
    parser.add_argument("--compile-only", action="store_true", help="exit after that compile step")
    parser.add_argument("--sweep-kinds", nargs="+", choices=("fwd", "bwd"), default=["fwd", "bwd"],
                        help="--prefill-sweep: which kernels to sweep")
    parser.add_argument("--sweep-autotuned", action="store_true",
                        help="--prefill-sweep: only the autotuned configs (not the comparison-only ones)")
    parser.add_argument("--unpack-triton-cache", metavar="PREFIX",
                        help="first extract a Triton cache written by --pack-triton-cache (PREFIX.0, PREFIX.1, ...)")
    parser.add_argument("--pack-triton-cache", metavar="PREFIX",
                        help="at the end write Triton's cache (binaries, autotune results) as PREFIX.0, PREFIX.1, ...")
    parser.add_argument("--rounding-emulation", action="store_true",
                        help="CPU: the forward's two roundings (without vs with DECAY_OUT) compared, then exit")
    parser.add_argument("--no-fla", action="store_true")
    parser.add_argument("--sdpa", action="store_true", help="add PyTorch SDPA causal rows (slow at long T)")
    args = parser.parse_args()
    if args.rounding_emulation:
        rounding_emulation()
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    fla_chunk = fla_recurrent = None
    if not args.no_fla:
        try:
            from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

            fla_chunk, fla_recurrent = chunk_simple_gla, fused_recurrent_simple_gla
        except ImportError as err:
            print(f"fla not importable ({err}): pip install fla-core; its rows are skipped")
    if args.unpack_triton_cache:
        unpack_triton_cache(args.unpack_triton_cache)
    try:
        return run(args, fla_chunk, fla_recurrent)
    finally:
        if args.pack_triton_cache:
            pack_triton_cache(args.pack_triton_cache)


def run(args, fla_chunk, fla_recurrent) -> int:
    """The benchmark proper (main() parses the flags and handles the Triton cache around it)."""
    torch.manual_seed(0)
    H, D = args.heads, args.dim
    if args.decode_ncu_target:
        decode_ncu_target(args.decode_batches[0], H, D, slopes(H), ABLATION_CANDIDATES)
        return 0
    bw = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    slope = slopes(H)
    if args.prefill_sweep:
        prefill_sweep(args.lengths, args.tokens, H, D, slope, bw, max(1, args.compile_workers),
                      tuple(args.sweep_kinds), varlen=not args.no_varlen, autotuned_only=args.sweep_autotuned)
        return 0
    varlens = ([False] if args.lengths else []) + ([] if args.no_varlen else [True])
    if args.compile_workers and varlens:
        compile_in_parallel([(kind, False, i, varlen) for kind in ("bwd", "fwd") for varlen in varlens
                             for i in range(len(_config_list(kind, False)))], args.compile_workers, H, D,
                            fla=fla_chunk is not None,  # (an unpacked cache: compiled configs load, the rest compile)
                            fla_batch=max(1, args.tokens // args.lengths[0]) if args.lengths else 1)
    if args.compile_only:
        if fla_chunk is not None:
            try:
                tune_fla(fla_chunk, args, slope)
            except Exception as exc:  # noqa: BLE001 - the table process then tunes fla itself (slower)
                print(f"fla tuning FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return 0
    table = Table(bw)
    make = lambda b, t: [F.silu(torch.randn(b, t, H, D, device="cuda")).to(torch.bfloat16) for _ in range(3)]
    cases = [(f"B={max(1, args.tokens // t)} T={t}", max(1, args.tokens // t), t, None) for t in args.lengths]
    if not args.no_varlen:
        bounds = varlen_bounds(64, args.tokens)
        cases.append((f"varlen 64 seqs {bounds[-1]}", 1, bounds[-1],
                      torch.tensor(bounds, device="cuda", dtype=torch.int32)))
    for shape, batch, length, cu in cases:
        q, k, v = make(batch, length)
        prefill_rows(table, shape, q, k, v, slope, cu, fla_chunk)
        if args.sdpa and cu is None:
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            act = q.numel() * 2
            table.add("PyTorch SDPA causal", shape, "fwd",
                      both(lambda qt=qt, kt=kt, vt=vt: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)), 4 * act)
        del q, k, v
        torch.cuda.empty_cache()
    from lightswe.kernels.lightning_attn import chunk

    for name, kern in (("fwd", chunk._fwd_kernel), ("bwd", chunk._bwd_kernel)):
        for key, config in getattr(kern, "cache", {}).items():  # key: (H, K, V, NB, IS_VARLEN, dtypes...)
            print(f"tuned {name} {key[:5]}: {config}", flush=True)
    for tuner in _fla_tuners().values():  # fla's own picks (recorded on disk with cache_results)
        for key, config in tuner.cache.items():
            print(f"fla tuned {tuner.base_fn.__name__} {key}: {config}", flush=True)
    if args.decode_ablation:
        for batch in args.ablation_batches or args.decode_batches:
            decode_ablation(batch, H, D, slope, bw, ABLATION_CANDIDATES)
    if args.decode_launch:
        decode_launch_study(args.decode_batches, H, D, slope, bw)
    if args.decode_sweep:  # the rows below then run the sweep's fastest config per B (CUDA-graph timer)
        from lightswe.kernels.lightning_attn import decode

        fastest = decode_sweep(args.decode_batches, H, D, slope, bw)
        decode.DECODE_CONFIGS = tuple((0 if i == 0 else b * H, fastest[b]) for i, b in
                                      enumerate(sorted(fastest)))
        print("DECODE_CONFIGS =", decode.DECODE_CONFIGS, flush=True)
    for batch in args.decode_batches if not (args.decode_launch or args.decode_ablation) else ():  # (the study has its own rows)
        decode_rows(table, batch, H, D, slope, fla_recurrent, chunk_form_sweep=args.chunk_form_sweep)
        torch.cuda.empty_cache()
    print(f"\nH={H}, D={D}, {args.tokens} tokens per prefill call, bf16 q/k/v, fp32 states:")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
