"""Lightning attention timings: our Triton kernels vs flash-linear-attention and PyTorch SDPA (CUDA only).

    python benchmarks/lightning_attn.py                 # H=64, D=128, 65,536 tokens, T = 2K, 8K, 32K, 64K
    python benchmarks/lightning_attn.py --lengths 8192 --no-sdpa

Same math for every lightning row: fla's chunk_simple_gla / fused_recurrent_simple_gla with
g_gamma = -slope and scale = 1.0 compute MiniMax's S_t = exp(-slope) S_{t-1} + k_t^T v_t, o_t = q_t S_t.
Timing: CUDA events around 10 back-to-back calls after 3 warm-ups (mean per call).
FLOPs are the chunk form's (chunk 64): forward 2*64*(K+V) + 4*K*V per token and head, backward twice
that; SDPA causal: 2*T*D per token and head forward (half of 4*T*D), backward 2.5x. The bandwidth bound
is the fewest bytes (inputs read once, outputs written once) over the copy bandwidth measured here.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from lightswe.kernels.lightning_attn import lightning_attn, lightning_attn_decode

CHUNK = 64


def cuda_time(fn, warmup: int = 3, iters: int = 10) -> float:
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


def copy_bandwidth() -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written."""
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src))
    return 2 * src.numel() / (ms * 1e-3)


def slopes(heads: int, layer: int = 0, layers: int = 80) -> torch.Tensor:
    base = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])
    return (base * (1 - layer / (layers - 1) + 1e-5)).float().cuda()


def row(name: str, length: int, mode: str, ms: float, flops: float, nbytes: float, bw: float) -> str:
    bound_ms = nbytes / bw * 1e3
    return (f"| {name:<28} | {length:>6} | {mode:<8} | {ms:9.3f} | {flops / ms / 1e9:8.1f} | "
            f"{bound_ms / ms:6.1%} |")


def lightning_flops(tokens_heads: int, dim: int) -> float:
    return tokens_heads * (2 * CHUNK * 2 * dim + 4 * dim * dim)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768, 65536])
    parser.add_argument("--decode-batch", type=int, default=8)
    parser.add_argument("--no-fla", action="store_true")
    parser.add_argument("--no-sdpa", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    fla = None
    if not args.no_fla:
        try:
            from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

            fla = (chunk_simple_gla, fused_recurrent_simple_gla)
        except ImportError as err:
            print(f"fla not importable ({err}): pip install fla-core; its rows are skipped")
    torch.manual_seed(0)
    H, D = args.heads, args.dim
    bw = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s (read + write)")
    slope = slopes(H)
    header = ("| op | T | mode | ms | TFLOP/s | of BW bound |\n"
              "|---|---|---|---|---|---|")
    lines = [header]
    for length in args.lengths:
        batch = max(1, args.tokens // length)
        q, k, v = (F.silu(torch.randn(batch, length, H, D, device="cuda")).to(torch.bfloat16)
                   for _ in range(3))
        do = torch.randn_like(q)
        th = batch * length * H
        act = th * D * 2  # bytes of one bf16 [B, T, H, D] tensor
        fl_fwd = lightning_flops(th, D)
        cand = {"ours (Triton)": lambda q, k, v: lightning_attn(q, k, v, slope)}
        if fla:
            cand["fla chunk_simple_gla"] = lambda q, k, v: fla[0](
                q, k, v, g_gamma=-slope, scale=1.0, output_final_state=True)
        results = {}
        for name, fn in cand.items():
            o, ht = fn(q, k, v)
            results[name] = (o, ht)
            ms = cuda_time(lambda fn=fn, q=q, k=k, v=v: fn(q, k, v))
            lines.append(row(name, length, "fwd", ms, fl_fwd, 4 * act + ht.numel() * 4, bw))
            leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]

            def fwd_bwd(fn=fn, leaves=leaves, do=do):
                o, _ = fn(*leaves)
                o.backward(do)

            ms = cuda_time(fwd_bwd)
            lines.append(row(name, length, "fwd+bwd", ms, 3 * fl_fwd, 11 * act, bw))
            del leaves
        if fla:
            (o1, h1), (o2, h2) = results.values()
            err_o = ((o1.float() - o2.float()).norm() / o2.float().norm()).item()
            err_h = ((h1 - h2.float()).norm() / h2.float().norm()).item()
            print(f"T={length}: ours vs fla relative difference: o {err_o:.2e}, final state {err_h:.2e}")
        del results
        from lightswe.kernels.lightning_attn import chunk

        print(f"T={length}: tuned forward {chunk._fwd_kernel.best_config}; "
              f"backward {chunk._bwd_kernel.best_config}")
        if not args.no_sdpa:
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            def sdpa(qt=qt, kt=kt, vt=vt):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

            fl = 2 * th * length * D  # causal: half of 4*T*D per token-head
            lines.append(row("PyTorch SDPA causal", length, "fwd", cuda_time(sdpa), fl, 4 * act, bw))
            leaves = [x.detach().clone().requires_grad_() for x in (qt, kt, vt)]
            dot = do.transpose(1, 2)
            ms = cuda_time(lambda leaves=leaves, dot=dot: F.scaled_dot_product_attention(
                *leaves, is_causal=True).backward(dot))
            lines.append(row("PyTorch SDPA causal", length, "fwd+bwd", ms, 3.5 * fl, 11 * act, bw))
            del leaves
        del q, k, v, do
        torch.cuda.empty_cache()

    # Decode: rotate over 4 states (4 x 67 MB at B=8) so that the state comes from HBM, not from L2.
    batch = args.decode_batch
    n_sets = 4
    sets = [[F.silu(torch.randn(batch, H, D, device="cuda")).to(torch.bfloat16) for _ in range(3)]
            + [torch.randn(batch, H, D, D, device="cuda")] for _ in range(n_sets)]
    nbytes = 2 * batch * H * D * D * 4 + 4 * batch * H * D * 2
    fl = batch * H * 4 * D * D

    def rotating(step):
        def run():
            for q, k, v, state in sets:
                step(q, k, v, state)
        return run

    ours = rotating(lambda q, k, v, s: lightning_attn_decode(q, k, v, slope, s))
    lines.append(row("ours decode (Triton)", batch, "decode", cuda_time(ours) / n_sets, fl, nbytes, bw))
    if fla:
        step = lambda q, k, v, s: fla[1](q[:, None], k[:, None], v[:, None], g_gamma=-slope,
                                         scale=1.0, initial_state=s, output_final_state=True)
        lines.append(row("fla fused_recurrent_simple_gla", batch, "decode",
                         cuda_time(rotating(step)) / n_sets, fl, nbytes, bw))
        q, k, v, state = sets[0]
        s_a, s_b = state.clone(), state.clone()
        o_a = lightning_attn_decode(q, k, v, slope, s_a)
        o_b, s_b = step(q, k, v, s_b)
        err = ((o_a.float() - o_b[:, 0].float()).norm() / o_b.float().norm()).item()
        print(f"decode: ours vs fla relative difference: o {err:.2e}, "
              f"state {((s_a - s_b).norm() / s_b.norm()).item():.2e}")
    ours()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ours()
    lines.append(row("ours decode, CUDA graph", batch, "decode", cuda_time(graph.replay) / n_sets, fl,
                     nbytes, bw))
    print(f"\nH={H}, D={D}, {args.tokens} tokens per call (B = tokens / T), bf16 inputs; decode B={batch}:")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
