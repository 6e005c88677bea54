"""Prefill and decode speed and memory of the hybrid model against same-shape softmax-only (and lightning-only)
models: the ``small`` preset (~98M) with its layer pattern replaced.

    python benchmarks/model.py                                   # CPU, short contexts
    python benchmarks/model.py --device cuda --contexts 1024,4096,16384,65536 --dtype bfloat16 --json out.json

Prefill: one sequence of T tokens, no cache, last-position logits (tokens/s = T / time).
Decode: ``--batch`` sequences prefilled to T tokens, then ``--steps`` greedy steps through the hybrid cache
(tokens/s = batch / median step time). Memory: cache bytes per sequence (lightning state + softmax KV), and on
CUDA the peak allocated during the decode steps. Timing: CUDA events / perf_counter, after one warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import torch
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

PATTERNS = {"hybrid": "LLLLLLLS", "softmax": "SSSSSSSS", "lightning": "LLLLLLLL"}


def lightning_path(device: torch.device, head_dim: int) -> str:
    """Which lightning attention implementation runs for these tensors (the kernels helper's dispatcher)."""
    from lightswe.kernels.lightning_attn import api

    if hasattr(api, "_use_triton"):
        q = torch.empty(1, 1, 1, head_dim, device=device)
        try:
            return "triton" if api._use_triton(q, (head_dim, head_dim)) else "pytorch-reference"
        except Exception as err:  # noqa: BLE001 - report, not fail
            return f"unknown ({err})"
    return "pytorch-reference"


def build(kind: str, device: torch.device, dtype: torch.dtype) -> MiniMaxForCausalLM:
    small = MiniMaxConfig.preset("small")
    fields = {f.name: getattr(small, f.name) for f in dataclasses.fields(small)}
    for name in ("num_hidden_layers", "attn_type_list") + tuple(n for n in fields if n.startswith("layernorm_")):
        fields.pop(name)
    config = MiniMaxConfig.from_pattern(PATTERNS[kind], **fields)
    torch.manual_seed(0)
    return MiniMaxForCausalLM(config).to(device=device, dtype=dtype).eval()


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> Timer:  # noqa: PYI034
        if self.cuda:
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


@torch.no_grad()
def prefill(model: MiniMaxForCausalLM, length: int, device: torch.device, repeats: int) -> dict[str, float]:
    ids = torch.randint(0, 256, (1, length), device=device)
    model.logits(model.hidden_states(ids)[0][:, -1])  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):  # best of ``repeats``
        with Timer(device) as t:
            model.logits(model.hidden_states(ids)[0][:, -1])
        times.append(t.seconds)
    out = {"prefill_s": min(times), "prefill_tok_s": length / min(times)}
    if device.type == "cuda":
        out["prefill_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


@torch.no_grad()
def decode(model: MiniMaxForCausalLM, length: int, batch: int, steps: int, device: torch.device,
           profile: bool = False) -> dict[str, float]:
    ids = torch.randint(0, 256, (batch, length), device=device)
    cache = model.new_cache(batch, reserve=steps + 2)
    token = model.logits(model.hidden_states(ids, cache=cache)[0][:, -1]).argmax(-1)
    token = model.logits(model.hidden_states(token[:, None], cache=cache)[0][:, -1]).argmax(-1)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(steps):
        with Timer(device) as t:
            token = model.logits(model.hidden_states(token[:, None], cache=cache)[0][:, -1]).argmax(-1)
        times.append(t.seconds)
    step = sorted(times)[len(times) // 2]  # median step: robust to other processes on a shared CPU
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            for _ in range(3):
                token = model.logits(model.hidden_states(token[:, None], cache=cache)[0][:, -1]).argmax(-1)
            if device.type == "cuda":
                torch.cuda.synchronize()
        events = prof.key_averages()
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"decode profile, 3 steps, context {length}:\n" + events.table(sort_by=sort, row_limit=12), flush=True)
    per_seq = cache.bytes_per_sequence()[0]
    out = {"decode_tok_s": batch / step, "decode_step_ms": 1e3 * step,
           "cache_mib_per_seq": per_seq / 2**20,
           "state_mib_per_seq": cache.state_bytes_per_sequence() / 2**20,
           "kv_mib_per_seq": (per_seq - cache.state_bytes_per_sequence()) / 2**20,
           "cache_alloc_mib": cache.nbytes() / 2**20}
    if device.type == "cuda":
        out["decode_peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    del cache
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--contexts", default="256,1024")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--models", default="hybrid,softmax,lightning")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="print a profile of 3 decode steps")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    contexts = [int(c) for c in args.contexts.split(",")]
    head = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "dtype": str(dtype), "threads": torch.get_num_threads(),
            "lightning_path": lightning_path(device, MiniMaxConfig.preset("small").head_dim),
            "backend_env": os.environ.get("LIGHTSWE_LIGHTNING_BACKEND", "auto"),
            "batch": args.batch, "steps": args.steps}
    print(json.dumps(head))
    rows = []
    for kind in args.models.split(","):
        model = build(kind, device, dtype)
        params = model.num_parameters()
        for length in contexts:
            row = {"model": kind, "params_m": params / 1e6, "context": length}
            row.update(prefill(model, length, device, args.repeats))
            row.update(decode(model, length, args.batch, args.steps, device, args.profile))
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    cols = ["model", "context", "prefill_tok_s", "decode_tok_s", "decode_step_ms", "state_mib_per_seq",
            "kv_mib_per_seq", "cache_mib_per_seq"] + (["prefill_peak_mib", "decode_peak_extra_mib"]
                                                      if device.type == "cuda" else [])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": head, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
