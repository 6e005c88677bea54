"""Sampling throughput of the built-in model: the engine (static cache, CUDA graphs, continuous batching) against
the plain loop, with the bandwidth bound of a decode step beside each row.

    python benchmarks/sampler.py --device cuda                       # the issue's table (H200: see README)
    python benchmarks/sampler.py --device cpu --model tiny --prompt 32 --new 8 --batches 2 --contexts 64,128 \
        --context-batches 1 --loop-steps 2                           # CPU smoke

Rows:
- generate: ``--batches`` prompts of ``--prompt`` random tokens, ``--new`` new tokens each at temperature
  ``--temperature`` (no stop token: every row runs to the end). tokens/s = new tokens / wall time of the whole
  ``engine.generate`` call (prefill included); the decode step is timed separately (CUDA events over graph
  replays).
- loop: the plain loop (``generate_loop``, what ran on CUDA before the engine), timed over ``--loop-steps``
  decode steps after its prefill, and profiled with torch.profiler (``--profile``).
- context: decode steps of the hybrid and of a softmax-only model of the same shape (``small`` with every layer
  softmax) with every row's cache filled to ``--contexts`` tokens (random states and keys: speed does not depend
  on the values), ``--context-batches`` rows.
Bandwidth bound of one step = (weights in the model dtype + the lightning state bytes a step moves
(``StaticCache.state_step_bytes_per_row``: the exact step reads and writes the fp32 state; the chunk form reads
its bf16 copy and the chunk's keys and values, and advances the fp32 state once per chunk) + the keys and
values each row attends to + the fp32 copy of the LM head) / the device-to-device copy bandwidth measured at
start (CPU: no bound).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM, SamplingConfig
from lightswe.model.engine import SamplerEngine
from lightswe.model.generation import generate_loop


def copy_bandwidth(device: torch.device) -> float | None:
    """Bytes/s of a 2 GiB device-to-device copy (read + written), best of 5."""
    if device.type != "cuda":
        return None
    src = torch.randn(2**28, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * 4 / best


def build(preset: str, pattern: str | None, device: torch.device, dtype: torch.dtype) -> MiniMaxForCausalLM:
    config = MiniMaxConfig.preset(preset)
    if pattern:
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        for name in ("num_hidden_layers", "attn_type_list") + tuple(n for n in fields if n.startswith("layernorm_")):
            fields.pop(name)
        config = MiniMaxConfig.from_pattern(pattern, **fields)
    torch.manual_seed(0)
    return MiniMaxForCausalLM(config).to(device=device, dtype=dtype).eval()


def step_bytes(model: MiniMaxForCausalLM, engine: SamplerEngine, rows: int, context: float) -> float:
    """Fewest bytes one decode step of ``rows`` rows at mean ``context`` cached tokens must move."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    head = model.lm_head.weight.numel() * 4 * 2  # the fp32 head copy: written, read
    cache = engine.cache
    return weights + head + rows * (cache.state_step_bytes_per_row() + context * cache.kv_bytes_per_token)


def time_steps(engine: SamplerEngine, steps: int) -> float:
    """Median seconds of one decode step (graph replay or eager), by CUDA events; host clock on CPU."""
    times = []
    for _ in range(steps):
        if engine.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            engine._graph(False).replay() if engine.use_graphs else engine._decode(False)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            engine._decode(False)
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def generate_row(model, batch: int, args, bandwidth: float | None) -> dict:
    device = model.lm_head.weight.device
    vocab = min(model.config.vocab_size, 256)
    prompts = torch.randint(0, vocab, (batch, args.prompt)).tolist()
    sampling = SamplingConfig(max_new_tokens=args.new, temperature=args.temperature, seed=0)
    engine = SamplerEngine(model, max_slots=batch, max_seq_len=args.prompt + args.new)
    start = time.perf_counter()
    engine.generate(prompts, dataclasses.replace(sampling, max_new_tokens=args.new))  # warm-up: compile, capture
    sync(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    gens = engine.generate(prompts, sampling)
    sync(device)
    seconds = time.perf_counter() - start
    new_tokens = sum(len(g.token_ids) for g in gens)
    # decode step alone, at the mean context of the run, all rows active
    engine.cache.lengths.fill_(args.prompt + args.new // 2)
    engine.active.fill_(True)
    engine.count.zero_()
    engine.max_new.fill_(2**30)
    step = time_steps(engine, 50)
    row = {"model": "hybrid" + (" (compiled step)" if engine.compile else ""), "rows": batch,
           "tokens_s": new_tokens / seconds, "wall_s": seconds, "warmup_s": warmup,
           "step_ms": 1e3 * step, "decode_tokens_s": batch / step}
    if bandwidth:
        bound = step_bytes(model, engine, batch, args.prompt + args.new / 2) / bandwidth
        row.update(bound_ms=1e3 * bound, bound_tokens_s=batch / bound, of_bound=bound / step)
    del engine
    return row


@torch.no_grad()
def loop_row(model, batch: int, args) -> dict:
    """The plain loop: prefill, then ``--loop-steps`` eager steps, timed per step (and profiled)."""
    device = model.lm_head.weight.device
    prompts = torch.randint(0, min(model.config.vocab_size, 256), (batch, args.prompt)).tolist()
    sampling = SamplingConfig(max_new_tokens=2, temperature=args.temperature, seed=0)
    generate_loop(model, prompts, sampling)  # warm-up
    sync(device)
    start = time.perf_counter()
    generate_loop(model, prompts, dataclasses.replace(sampling, max_new_tokens=1))
    sync(device)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    generate_loop(model, prompts, dataclasses.replace(sampling, max_new_tokens=args.loop_steps + 1))
    sync(device)
    step = (time.perf_counter() - start - prefill) / args.loop_steps
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            generate_loop(model, prompts, dataclasses.replace(sampling, max_new_tokens=4))
            sync(device)
        for sort in ("self_cpu_time_total", "self_cuda_time_total" if device.type == "cuda" else None):
            if sort:
                print(f"\nplain loop, {batch} rows, prefill + 3 steps, by {sort}:\n"
                      + prof.key_averages().table(sort_by=sort, row_limit=18), flush=True)
    return {"model": "hybrid (plain loop)", "rows": batch, "step_ms": 1e3 * step, "decode_tokens_s": batch / step,
            "prefill_s": prefill}


@torch.no_grad()
def context_row(model, kind: str, context: int, rows: int, bandwidth: float | None, compile_step: bool) -> dict:
    """Decode steps with every row's cache filled to ``context`` tokens (random contents)."""
    engine = SamplerEngine(model, max_slots=rows, max_seq_len=context + 64, compile=compile_step)
    cache = engine.cache
    cache.states.normal_(0, 0.01)
    cache.keys.normal_()
    cache.values.normal_()
    cache.lengths.fill_(context)
    engine.active.fill_(True)
    engine.max_new.fill_(2**30)
    engine.out_tokens = torch.zeros(rows, 2, dtype=torch.long, device=engine.device)
    engine.out_logprobs = torch.zeros(rows, 2, device=engine.device)
    engine.count.zero_()
    step = time_steps(engine, 30)
    row = {"model": kind, "rows": rows, "context": context, "step_ms": 1e3 * step, "decode_tokens_s": rows / step,
           "cache_gib": cache.nbytes() / 2**30}
    if bandwidth:
        bound = step_bytes(model, engine, rows, context) / bandwidth
        row.update(bound_ms=1e3 * bound, bound_tokens_s=rows / bound, of_bound=bound / step)
    del engine, cache
    if model.lm_head.weight.is_cuda:
        torch.cuda.empty_cache()
    return row


@torch.no_grad()
def logprob_rows(preset: str, device: torch.device) -> list[dict]:
    """Mean |sampler log-prob - learner log-prob| over 16 prompts x 128 tokens (T=1) for each sampler mode and
    learner setting: ``benchmarks/logprob_layers.py``'s table (that script adds the per-layer breakdown)."""
    import copy

    from logprob_layers import agreement_table  # benchmarks/ is the script's directory

    torch.manual_seed(0)
    fp32 = MiniMaxForCausalLM(MiniMaxConfig.preset(preset)).to(device).eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (int(n),), generator=g).tolist() for n in torch.randint(64, 512, (16,), generator=g)]
    return agreement_table(fp32, bf16, prompts, SamplingConfig(max_new_tokens=128, temperature=1.0, seed=0))


def table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.1%}" if c == "of_bound" and v != "" else f"{v:.2e}" if c.endswith(("_abs", "_mean"))
                         else f"{v:,.3f}" if isinstance(v, float) and v < 100
                         else f"{v:,.0f}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="small")
    parser.add_argument("--dtype", default=None, help="bfloat16 (CUDA default) or float32 (CPU default)")
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--new", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--loop-steps", type=int, default=16, help="0: skip the plain-loop row")
    parser.add_argument("--profile", action="store_true", help="profile the plain loop (torch.profiler)")
    parser.add_argument("--contexts", default="4096,131072")
    parser.add_argument("--context-batches", default="1,32")
    parser.add_argument("--context-compile", action="store_true",
                        help="torch.compile the context rows' step too (one compile per row: slow)")
    parser.add_argument("--softmax-pattern", default="SSSSSSSS", help="layer pattern of the softmax-only model")
    parser.add_argument("--logprobs", action="store_true", help="print the sampler/learner log-prob agreement table")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    bandwidth = copy_bandwidth(device)
    head = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "dtype": str(dtype), "model": args.model, "prompt": args.prompt,
            "new": args.new, "temperature": args.temperature,
            "copy_bandwidth_tb_s": bandwidth / 1e12 if bandwidth else None}
    print(json.dumps(head), flush=True)
    model = build(args.model, None, device, dtype)
    print(f"parameters: {model.num_parameters() / 1e6:.1f}M", flush=True)
    gen_rows = []
    for batch in (int(b) for b in args.batches.split(",") if b):
        if args.loop_steps:
            gen_rows.append(loop_row(model, batch, args))
            print(json.dumps(gen_rows[-1]), flush=True)
        gen_rows.append(generate_row(model, batch, args, bandwidth))
        print(json.dumps(gen_rows[-1]), flush=True)
    ctx_rows = []
    softmax = build(args.model, args.softmax_pattern, device, dtype) if args.contexts else None
    for rows in (int(b) for b in args.context_batches.split(",") if b):
        for context in (int(c) for c in args.contexts.split(",") if c):
            for kind, m in (("hybrid", model), ("softmax-only", softmax)):
                try:
                    ctx_rows.append(context_row(m, kind, context, rows, bandwidth, args.context_compile))
                except torch.OutOfMemoryError as err:
                    ctx_rows.append({"model": kind, "rows": rows, "context": context, "step_ms": f"OOM ({err})"[:40]})
                print(json.dumps(ctx_rows[-1]), flush=True)
    print(f"\n## generate: {args.model}, {dtype}, prompt {args.prompt}, {args.new} new tokens, T={args.temperature}\n")
    print(table(gen_rows, ["model", "rows", "tokens_s", "wall_s", "warmup_s", "step_ms", "decode_tokens_s", "bound_ms",
                           "bound_tokens_s", "of_bound", "prefill_s"]))
    print(f"\n## decode at context (one step, every row at that context; "
          f"{'compiled' if args.context_compile else 'eager'} step in a CUDA graph)\n")
    print(table(ctx_rows, ["model", "rows", "context", "step_ms", "decode_tokens_s", "bound_ms", "bound_tokens_s",
                           "of_bound", "cache_gib"]))
    lp_rows = logprob_rows(args.model, device) if args.logprobs else []
    if lp_rows:
        print(f"\n## log-prob agreement: {args.model}, sampler vs learner on the sampled tokens\n")
        print(table(lp_rows, ["sampler", "learner", "mean_abs", "first_token_mean", "later_tokens_mean"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": head, "generate": gen_rows, "context": ctx_rows, "logprobs": lp_rows}, f, indent=2)


if __name__ == "__main__":
    main()
