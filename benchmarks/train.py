"""Learner throughput and memory: CISPO updates of the ``small`` model, with and without the Triton lightning
attention kernels (``LIGHTSWE_LIGHTNING_BACKEND=triton`` vs ``reference``, the PyTorch chunked reference).

    python benchmarks/train.py                                  # CPU smoke: tiny model, short rows
    python benchmarks/train.py --device cuda --model small --seq-lens 2048,8192 --tokens 32768 --json out.json
    torchrun --nproc-per-node 2 benchmarks/train.py --fsdp --device cuda --model small --tokens 32768  # FSDP2

With ``--fsdp`` (under torchrun) the model is sharded with FSDP2 over the ranks (NCCL on CUDA, gloo on CPU) and
``--tokens`` is the step's total: each rank gets ``tokens / world`` of it, throughput counts all ranks' tokens and
memory is reported per GPU.

One step = one ``Learner.step`` on a batch of ``tokens / T`` random rows of T tokens (half of each row marked
as policy tokens), one optimiser step, micro-batches of ``--micro`` rows, bf16 autocast on CUDA (fp32 weights,
AdamW state and LM head). Throughput = all tokens forwarded / median step time after one warm-up step; memory =
peak CUDA memory allocated during the timed steps.

Measured (one run, NVIDIA H200 assigned when no H100 was free, torch 2.11+cu130, Triton 3.6; small model 98.6M
parameters, 32,768 tokens per step, 2 rows per micro-batch, bf16 autocast, no activation checkpointing):

| T | lightning backend | tokens/s | step s | peak GiB |
|---|---|---|---|---|
| 2,048 | Triton kernels | 30,207 | 1.085 | 3.76 |
| 2,048 | PyTorch reference | 8,140 | 4.026 | 4.01 |
| 8,192 | Triton kernels | 63,819 | 0.513 | 9.59 |
| 8,192 | PyTorch reference | 11,324 | 2.894 | 10.58 |

(At T=2,048 the step runs 8 micro-batches instead of 2, so per-call overheads weigh more.)

FSDP2 on two GPUs (one run, nvidia-h200-x2, torch 2.11+cu130, Triton kernels, NCCL with NVLS off, default
``--micro 4``, same machine for the one-GPU baseline): ``python3 benchmarks/train.py --device cuda --model small
--seq-lens 2048,8192 --tokens 32768 --backends triton`` and ``torchrun --standalone --nproc-per-node 2
benchmarks/train.py --fsdp`` with the same options and ``--tokens`` 32768 or 65536 (the step's total):

| GPUs | T | tokens/step | tokens/s | step s | peak GiB per GPU |
|---|---|---|---|---|---|
| 1 | 2,048 | 32,768 | 55,678 | 0.589 | 5.70 |
| 2 (FSDP2) | 2,048 | 32,768 | 77,263 | 0.424 | 4.96 |
| 2 (FSDP2) | 2,048 | 65,536 | 74,185 | 0.883 | 4.96 |
| 1 | 8,192 | 32,768 | 122,220 | 0.268 | 16.92 |
| 2 (FSDP2) | 8,192 | 32,768 | 127,591 | 0.257 | 8.99 |
| 2 (FSDP2) | 8,192 | 65,536 | 219,549 | 0.299 | 16.73 |

At the same work per GPU two GPUs give 1.80x at T=8,192 but 1.33x at T=2,048 (0.88 s against 0.59 s per step
for 4 micro-batches per GPU): every micro-batch all-gathers and reduce-scatters each layer, and short rows leave
less compute to hide that behind (not profiled). Memory per GPU is set by activations; sharding the weights and
AdamW state (~1.6 GB in all for this model) saves little at this size.

MFU (2026-11-29, one H200, torch 2.11+cu130, Triton kernels, T=8,192, 32,768 tokens per step, ``--micro 2``,
bf16 autocast with the fp32 LM head; FLOPs per token from ``flops_per_token``, peak 989 TFLOP/s dense bf16):

| model | parameters (active) | tokens/s | step s | MFU | peak GiB |
|---|---|---|---|---|---|
| small | 98.6M (42M) | 73,503 | 0.446 | 2.1% | 9.61 |
| minimax-1b | 1,314M (182M) | 24,886 | 1.317 | 2.4% | 38.67 |

(The issue's ~10% for ``small`` counted all 98.6M parameters as 6N; top-2 of 8 experts makes 42M active.)
``--profile`` (one step, torch.profiler): ``minimax-1b`` spends 470 ms on the GPU in a 1.27 s step (host-bound:
~4,900 per-expert matrix products of varying row counts, ~100 us of host time each, and a sync per MoE layer);
37% of the GPU time is the fp32 LM head's fp32 (non-tensor-core) GEMMs. ``small``: 113 ms of GPU time in 0.46 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time

import torch
from lightswe.agent.cispo import CISPOLoss
from lightswe.agent.distributed import DistContext
from lightswe.agent.learner import Learner, LearnerConfig, TrainBatch, shard_model
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

PEAK_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16, datasheet (a matrix product reached ~790e12 on the H200 here)


def flops_per_token(model: MiniMaxForCausalLM, length: int) -> float:
    """Training FLOPs per token (forward + backward), as PaLM's MFU (Chowdhery et al. 2022, appendix B):
    6 x active parameters (every matrix a token passes through: attention projections, the router, its top-k
    experts, the LM head; not the input embedding, a lookup) + 6 x T x H x D per softmax layer (QK^T and PV,
    12 T H D, halved for the causal mask). The lightning layers' own state work (~5 MFLOP per token per layer,
    a few % of the total) is left out, so this understates MFU slightly."""
    c = model.config
    active = model.num_parameters(active=True) - c.vocab_size * c.hidden_size * (not c.tie_word_embeddings)
    softmax_layers = c.attn_type_list.count(1)
    return 6 * active + 6 * softmax_layers * length * c.num_attention_heads * c.head_dim


def make_batch(rows: int, length: int, vocab: int, seed: int = 0) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(vocab, 256), (rows, length), generator=g)
    mask = torch.zeros(rows, length, dtype=torch.bool)
    mask[:, length // 2:] = True
    logp = -torch.rand(rows, length, generator=g) * 3 * mask
    return TrainBatch(input_ids=ids, mask=mask, sampler_logp=logp, advantages=torch.randn(rows, generator=g))


def to_device(batch: TrainBatch, device: torch.device) -> TrainBatch:
    return TrainBatch(input_ids=batch.input_ids.to(device), mask=batch.mask.to(device),
                      sampler_logp=batch.sampler_logp.to(device), advantages=batch.advantages.to(device))


def profile_step(learner: Learner, batch: TrainBatch, device: torch.device, title: str) -> None:
    """Print where one learner step's host and device time go (torch.profiler, top ops by each)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        learner.step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / 1e3  # kernels only
    print(f"\nprofiled step, {title}: {wall * 1e3:.0f} ms wall, {busy:.0f} ms of GPU kernel time", flush=True)
    for sort in ("self_cpu_time_total", "self_cuda_time_total" if device.type == "cuda" else None):
        if sort:
            print(f"\nlearner step profile, {title}, by {sort}:\n" + events.table(sort_by=sort, row_limit=25, max_name_column_width=60),
                  flush=True)


def build(model_name: str, device: torch.device, checkpointing: bool, ctx: DistContext,
          param_dtype: torch.dtype | None) -> MiniMaxForCausalLM:
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device itself (1.3B normals on the host take seconds)
        model = MiniMaxForCausalLM(MiniMaxConfig.preset(model_name))
    model.gradient_checkpointing = checkpointing
    if ctx.distributed:
        shard_model(model, param_dtype=param_dtype)
    return model


def run(model: MiniMaxForCausalLM, model_name: str, device: torch.device, length: int, tokens: int, micro: int,
        steps: int, backend: str, moe: str, compiled: str, ctx: DistContext, profile: bool = False) -> dict:
    os.environ["LIGHTSWE_LIGHTNING_BACKEND"] = backend
    os.environ["LIGHTSWE_MOE_BACKEND"] = moe
    os.environ["LIGHTSWE_COMPILE"] = compiled
    cfg = LearnerConfig(lr=1e-5, minibatches=1, micro_batch_size=micro,
                        autocast_dtype="bfloat16" if device.type == "cuda" else None)
    learner = Learner(model, CISPOLoss(), cfg)
    rows = max(tokens // length // ctx.world, 1)  # per rank
    batch = to_device(make_batch(rows, length, model.config.vocab_size, seed=ctx.rank), device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        learner.step(batch)  # warm-up (Triton compilation, allocator)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            learner.step(batch)
            sync()
            times.append(time.perf_counter() - t0)
        (step_s,) = ctx.max([statistics.median(times)])  # the slowest rank sets the pace
        if profile and ctx.main:
            profile_step(learner, batch, device, f"{model_name}, T={length}, micro {micro}, moe {moe}")
    finally:
        model.zero_grad(set_to_none=True)
        del learner
    step_tokens = len(batch) * length * ctx.world
    out = {"model": model_name, "backend": backend, "moe": moe, "compile": compiled, "seq_len": length, "rows": len(batch) * ctx.world,
           "tokens_per_step": step_tokens, "micro_batch_rows": micro, "step_s": step_s,
           "tokens_per_s": step_tokens / step_s, "gradient_checkpointing": model.gradient_checkpointing,
           "ranks": ctx.world, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}  # DTensor: full size
    flops = flops_per_token(model, length)
    out.update(flops_per_token=flops, mfu=out["tokens_per_s"] * flops / (PEAK_BF16_FLOPS * ctx.world))
    if device.type == "cuda":
        peaks = [0.0] * ctx.world
        peaks[ctx.rank] = torch.cuda.max_memory_allocated(device) / 2**30
        peaks = ctx.sum(peaks)
        out["peak_mem_GiB"] = max(peaks)  # per GPU (the largest)
        if ctx.distributed:
            out["peak_mem_GiB_per_rank"] = peaks
    return out


def head_bench(device: torch.device, tokens: int, hidden: int, vocab: int, chunk: int = 1024) -> list[dict]:
    """The LM head alone, forward + backward of (log-prob, entropy) for ``tokens`` rows: the fp32 chunked head
    (``_chunk_logprobs`` under checkpointing, as on CPU) against the split-bf16 head (``model/head.py``) with 2
    and 3 pieces per operand; max error of each against fp64 logits on the first 2,048 rows."""
    from lightswe.model import head
    from lightswe.model.head import head_logprobs, logprob_entropy
    from lightswe.model.model import _chunk_logprobs
    from torch.utils.checkpoint import checkpoint

    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(tokens, hidden, device=device, generator=g)
    w = torch.randn(vocab, hidden, device=device, generator=g) * 0.1  # logits ~ N(0, 3.2) for H = 1024
    t = torch.randint(0, vocab, (tokens,), device=device, generator=g)
    gl, ge = torch.randn(tokens, device=device, generator=g), torch.randn(tokens, device=device, generator=g)

    def fp32_head(hh, ww):
        parts = [checkpoint(_chunk_logprobs, hh[s:s + chunk], ww, t[s:s + chunk], 1.0, use_reentrant=False)
                 for s in range(0, tokens, chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def split_head(pieces: int):
        def fn(hh, ww):
            old, head.PIECES = head.PIECES, pieces
            try:
                return head_logprobs(hh, ww, t, 1.0, chunk)
            finally:
                head.PIECES = old
        return fn

    ref_rows = slice(0, min(tokens, 2048))
    z64 = h[ref_rows].double() @ w.double().T
    lp64, _ = logprob_entropy(z64, t[ref_rows])
    out = []
    variants = (("fp32 (CUDA cores)", fp32_head), ("bf16x3 (tensor cores)", split_head(2)),
                ("bf16x6 (tensor cores)", split_head(3)))
    for name, fn in variants:
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        lp, ent = fn(hh, ww)
        (lp * gl + ent * ge).sum().backward()
        err = (lp[ref_rows].double() - lp64).abs()
        times = []
        for _ in range(3):
            hh.grad = ww.grad = None
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            lp, ent = fn(hh, ww)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            (lp * gl + ent * ge).sum().backward()
            torch.cuda.synchronize()
            times.append((t1 - t0, time.perf_counter() - t1))
        fwd, bwd = (statistics.median(x) for x in zip(*times))
        out.append({"head": name, "tokens": tokens, "fwd_ms": fwd * 1e3, "bwd_ms": bwd * 1e3,
                    "logprob_err_vs_fp64_max": err.max().item(), "logprob_err_vs_fp64_mean": err.mean().item(), "tflops_fwd": 2 * tokens * hidden * vocab / fwd / 1e12})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="tiny")
    p.add_argument("--seq-lens", default="256")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per optimiser step")
    p.add_argument("--micro", default="4", help="rows per micro-batch (comma list: one run each)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--backends", default=None, help="comma list; default triton,reference on CUDA, reference on CPU")
    p.add_argument("--moe", default="auto", help="comma list of MoE backends: auto, grouped, loop")
    p.add_argument("--compile", default="1", help="comma list: 1 = the fused elementwise chains of model/fused.py "
                   "compiled (the CUDA default), 0 = eager")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per layer")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 over the torchrun ranks; --tokens is the total")
    p.add_argument("--fsdp-bf16", action="store_true", help="FSDP2 all-gathers the layers' weights in bf16 "
                   "(MixedPrecisionPolicy; the root with the LM head stays fp32; gradients reduced in fp32)")
    p.add_argument("--head-bench", action="store_true", help="also time the LM head alone (fp32 vs bf16x3)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    ctx = DistContext.from_env(args.device) if args.fsdp else DistContext(device=args.device)
    if args.fsdp and not ctx.distributed:
        raise SystemExit("--fsdp needs several ranks: torchrun --nproc-per-node N benchmarks/train.py --fsdp ...")
    device = torch.device(ctx.device)
    say = print if ctx.main else (lambda *a, **k: None)
    backends = (args.backends or ("triton,reference" if device.type == "cuda" else "reference")).split(",")
    param_dtype = torch.bfloat16 if args.fsdp_bf16 else None
    results = []
    if args.head_bench and device.type == "cuda" and ctx.main:
        c = MiniMaxConfig.preset(args.model)
        for r in head_bench(device, 16384, c.hidden_size, c.vocab_size):
            say(json.dumps(r), flush=True)
    for length in [int(x) for x in args.seq_lens.split(",")]:
        for backend in backends:
            model = build(args.model, device, args.checkpointing, ctx, param_dtype)
            for moe, compiled, micro in itertools.product(args.moe.split(","), args.compile.split(","),
                                                          [int(x) for x in args.micro.split(",")]):
                try:
                    r = run(model, args.model, device, length, args.tokens, micro, args.steps, backend, moe,
                            compiled, ctx, args.profile)
                except Exception as err:  # noqa: BLE001 - an OOM or a failing variant is a row of the table
                    r = {"model": args.model, "backend": backend, "moe": moe, "compile": compiled, "seq_len": length,
                         "micro_batch_rows": micro, "error": f"{type(err).__name__}: {err}"[:300]}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                results.append(r)
                say(json.dumps(r), flush=True)
            del model
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
           else platform.processor() or platform.machine()}
    env["ranks"] = ctx.world
    say(f"\n| model | T | backend | MoE | compile | micro | tokens/step | tokens/s | step s | MFU (of 989 TFLOP/s) | "
        f"peak GiB per GPU |  ({env['device']} x{ctx.world}, torch {env['torch']})")
    for r in results:
        head = (f"| {r['model']} | {r['seq_len']} | {r['backend']} | {r.get('moe')} | {r.get('compile')} | "
                f"{r.get('micro_batch_rows')} |")
        if "error" in r:
            say(f"{head} {r['error'][:60]} | | | | |")
        else:
            say(f"{head} {r['tokens_per_step']:,} | {r['tokens_per_s']:,.0f} | {r['step_s']:.3f} | {r['mfu']:.1%} | "
                f"{r.get('peak_mem_GiB', float('nan')):.2f} |")
    ctx.close()
    if args.json and ctx.main:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
