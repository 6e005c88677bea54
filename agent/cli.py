"""``lightswe rollout``, ``lightswe eval`` and ``lightswe view``: the agent part's subcommands.

    lightswe rollout --tasks tasks.jsonl --policy scripted --out runs/r1 --group-size 4 --concurrency 4
    lightswe eval --tasks tasks.jsonl --policy model:ckpt --out runs/eval1     # resolve rate, 95% Wilson interval
    lightswe eval --out runs/r1                                                 # summarise an existing run
    lightswe view runs/r1                                                       # runs/r1/index.html
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sound at 0 and n successes, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _add_run_options(p: argparse.ArgumentParser, *, tasks_required: bool) -> None:
    p.add_argument("--tasks", required=tasks_required, help="task instances (JSONL)")
    p.add_argument("--policy", default="scripted", help="scripted | model:PRESET_OR_DIR | hf:DIR | openai:URL | vllm:MODEL | vllm:hf:DIR")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json path (default: the hf: checkpoint's own, else "
                                                     "the built-in byte tokenizer)")
    p.add_argument("--out", required=True, help="output directory (resumes if it holds episodes)")
    p.add_argument("--group-size", type=int, default=1, help="samples per task (G)")
    p.add_argument("--concurrency", type=int, default=4, help="episodes (sandboxes) in flight")
    p.add_argument("--round", type=int, default=0, help="learner iteration (part of group ids)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--max-context", type=int, default=32_768, help="tokens per episode")
    p.add_argument("--max-new-tokens", type=int, default=2_048, help="tokens per assistant turn")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--tool-format", default="minimax", choices=("minimax", "hermes"), help="tool-call format")
    p.add_argument("--early-stop", default="3000,0.99", help="N,p: stop after N tokens each with prob > p; 'off'")
    p.add_argument("--ray", nargs="?", const="local", default=None,
                   help="run episodes on Ray actors (address, or 'local' for a local cluster)")
    p.add_argument("--no-progress", action="store_true")


def _agent_config(args):
    from lightswe.agent.early_stop import EarlyStopConfig
    from lightswe.agent.loop import AgentConfig

    if args.early_stop == "off":
        early = EarlyStopConfig(enabled=False)
    else:
        window, _, prob = args.early_stop.partition(",")
        early = EarlyStopConfig(window=int(window), min_prob=float(prob or 0.99))
    return AgentConfig(max_steps=args.max_steps, max_context_tokens=args.max_context,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, early_stop=early)


def _run(args):
    from lightswe.agent.policies.spec import make_policy, tokenizer_path
    from lightswe.agent.rollout import LocalExecutor, RolloutConfig, default_env_factory, run_rollout
    from lightswe.model import load_tokenizer
    from lightswe.tasks.instance import read_jsonl

    tasks = read_jsonl(args.tasks)
    config = RolloutConfig(group_size=args.group_size, round=args.round, seed=args.seed,
                           progress=not args.no_progress)
    agent = _agent_config(args)
    args.tokenizer = args.tokenizer or tokenizer_path(args.policy)
    if args.ray:
        from lightswe.agent.ray_executor import RayExecutor

        executor = RayExecutor(policy=args.policy, tasks=tasks, num_workers=args.concurrency,
                               tokenizer=args.tokenizer, agent=agent, env_kwargs={"tool_format": args.tool_format},
                               address=None if args.ray == "local" else args.ray)
    else:
        tokenizer = load_tokenizer(args.tokenizer)
        policy = make_policy(args.policy, tokenizer=tokenizer, tasks=tasks)
        executor = LocalExecutor(policy, tokenizer, env_factory=default_env_factory(tasks, tool_format=args.tool_format),
                                 concurrency=args.concurrency, agent=agent)
    with executor:
        summary = run_rollout(tasks, executor, out_dir=args.out, config=config)
    print(f"{summary.episodes} episodes in {summary.seconds:.1f}s ({summary.skipped} already done, "
          f"{summary.failed} failed): resolved {summary.resolved}, statuses {dict(summary.statuses)}", file=sys.stderr)
    return summary


def rollout(args) -> int:
    summary = _run(args)
    return 1 if summary.failed else 0


def evaluate(args) -> int:
    from lightswe.agent.trajectory import read_trajectories

    if args.tasks:
        _run(args)
    elif not Path(args.out).is_dir():
        print(f"{args.out} does not exist: pass --tasks and --policy to run the evaluation", file=sys.stderr)
        return 2
    episodes = list(read_trajectories(args.out))
    resolved = sum(t.resolved for t in episodes)
    low, high = wilson_interval(resolved, len(episodes))
    report = {"episodes": len(episodes), "resolved": resolved, "resolve_rate": resolved / len(episodes) if episodes
              else 0.0, "ci95": [low, high], "statuses": dict(Counter(t.status.value for t in episodes)),
              "tasks": len({t.task_id for t in episodes})}
    print(f"resolve rate {report['resolve_rate']:.1%} ({resolved}/{len(episodes)}), 95% CI "
          f"[{low:.1%}, {high:.1%}]; statuses {report['statuses']}")
    print(json.dumps(report))
    return 0


def view(args) -> int:
    from lightswe.agent.viewer import write_viewer

    path = write_viewer(args.dir, path=args.output)
    print(path)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("rollout", help="run agent episodes over a task set and write trajectories")
    _add_run_options(p, tasks_required=True)
    p.set_defaults(func=rollout)

    p = subparsers.add_parser("eval", help="resolve rate with a 95%% Wilson interval (runs the tasks if given)")
    _add_run_options(p, tasks_required=False)
    p.set_defaults(func=evaluate)

    p = subparsers.add_parser("view", help="write a static HTML viewer of a rollout directory")
    p.add_argument("dir", help="rollout output directory")
    p.add_argument("--output", default=None, help="HTML file (default DIR/index.html)")
    p.set_defaults(func=view)

    __import__("lightswe.agent.train_cli", fromlist=["register_train"]).register_train(subparsers)  # learner's `train`
