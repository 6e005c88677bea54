"""Lightning attention timings: our Triton kernels vs flash-linear-attention at equal math (CUDA only).

    python benchmarks/lightning_attn.py                  # H=64, D=128, 65,536 tokens: T = 2K, 8K, 32K, 64K,
                                                         # a packed batch of 64 sequences, decode B = 8..64
    python benchmarks/lightning_attn.py --lengths 8192 --no-varlen --decode-batches 8 --sdpa

Same math on every lightning row: fla's chunk_simple_gla / fused_recurrent_simple_gla with g_gamma = -slope
and scale = 1.0 compute MiniMax's S_t = exp(-slope) S_{t-1} + k_t^T v_t, o_t = q_t S_t.

Two timers per row:
  event    CUDA events around 10 back-to-back calls after 3 warm-ups, mean per call (host overhead shows when
           the host cannot keep ahead of the GPU);
  do_bench ``triton.testing.do_bench`` median, the L2 cache flushed before every call (GPU time per call).
The bandwidth bound is the fewest bytes (inputs read once, outputs written once) over the device-to-device
copy bandwidth measured here (bytes read + written): forward q, k, v, o and the final state; forward+backward
11 activation tensors (q, k, v, o, dO, dq, dk, dv and q, k, v read again); decode the fp32 state read and
written plus q, k, v, o. "of bound" = bound / do_bench time; "vs fla" = fla time / ours, per timer.
fwd+bwd runs torch.autograd.grad (no .grad accumulation) after a forward that records the graph.
"""

from __future__ import annotations

import argparse
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


def bench_median(fn) -> float:
    """Median milliseconds per call, L2 flushed before each (triton.testing.do_bench)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


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
        self.lines.append(f"| {op:<30} | {shape:<18} | {mode:<7} | {ev:8.3f} | {med:8.3f} | {bound:7.3f} | "
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


def decode_rows(table: Table, batch: int, heads: int, dim: int, slope, fla_recurrent) -> None:
    """Decode rows: states rotated over enough sets (>= 256 MB) that the state comes from HBM."""
    state_bytes = batch * heads * dim * dim * 4
    n_sets = max(2, math.ceil(256e6 / state_bytes))
    sets = [[F.silu(torch.randn(batch, heads, dim, device="cuda")).to(torch.bfloat16) for _ in range(3)]
            + [torch.randn(batch, heads, dim, dim, device="cuda")] for _ in range(n_sets)]
    nbytes = 2 * state_bytes + 4 * batch * heads * dim * 2
    shape = f"B={batch}"

    def rotating(step):
        def run():
            for q, k, v, state in sets:
                step(q, k, v, state)
        return run

    def per_call(step):
        ev = event_mean(rotating(step)) / n_sets
        it = iter(range(1 << 62))
        med = bench_median(lambda: step(*sets[next(it) % n_sets]))
        return ev, med

    ours = lambda q, k, v, s: lightning_attn_decode(q, k, v, slope, s)
    if fla_recurrent is not None:
        fla_step = lambda q, k, v, s: fla_recurrent(q[:, None], k[:, None], v[:, None], g_gamma=-slope,
                                                    scale=1.0, initial_state=s, output_final_state=True)
        table.add("fla fused_recurrent_simple_gla", shape, "decode", per_call(fla_step), nbytes, is_fla=True)
        q, k, v, state = sets[0]
        s_a, s_b = state.clone(), state.clone()
        o_a = ours(q, k, v, s_a)
        o_b, s_b = fla_step(q, k, v, s_b)
        print(f"decode {shape}: ours vs fla relative difference: o {rel_diff(o_a, o_b[:, 0]):.2e}, "
              f"state {rel_diff(s_a, s_b):.2e}", flush=True)
    table.add("ours decode (Triton)", shape, "decode", per_call(ours), nbytes)
    run = rotating(ours)
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    ev = event_mean(graph.replay) / n_sets
    med = bench_median(graph.replay) / n_sets
    table.add("ours decode, CUDA graph", shape, "decode", (ev, med), nbytes)


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
    parser.add_argument("--no-fla", action="store_true")
    parser.add_argument("--sdpa", action="store_true", help="add PyTorch SDPA causal rows (slow at long T)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    fla_chunk = fla_recurrent = None
    if not args.no_fla:
        try:
            from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

            fla_chunk, fla_recurrent = chunk_simple_gla, fused_recurrent_simple_gla
        except ImportError as err:
            print(f"fla not importable ({err}): pip install fla-core; its rows are skipped")
    torch.manual_seed(0)
    H, D = args.heads, args.dim
    bw = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    slope = slopes(H)
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

    print("tuned (last shape):", {name: str(kern.best_config) for name, kern in
                                  (("fwd", chunk._fwd_kernel), ("bwd", chunk._bwd_kernel))
                                  if getattr(kern, "best_config", None) is not None}, flush=True)
    for batch in args.decode_batches:
        decode_rows(table, batch, H, D, slope, fla_recurrent)
        torch.cuda.empty_cache()
    print(f"\nH={H}, D={D}, {args.tokens} tokens per prefill call, bf16 q/k/v, fp32 states:")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
