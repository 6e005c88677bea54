"""``lightswe rollout``, ``lightswe eval`` and ``lightswe view``: the agent part's subcommands.

    lightswe rollout --tasks tasks.jsonl --policy scripted --out runs/r1 --group-size 4 --concurrency 4
    lightswe eval --tasks tasks.jsonl --policy model:ckpt --out runs/eval1     # resolve rate, 95% Wilson interval
    lightswe eval --out runs/r1                                                 # summarise an existing run
    lightswe eval --out runs/train                                              # ... or a train run, per folder
    lightswe view runs/r1                                                       # runs/r1/index.html

``rollout`` and ``eval`` take their options from :class:`RolloutArgs` / :class:`EvalArgs` (``--config FILE``
works too); a rerun into the same ``--out`` resumes, and refuses other settings unless ``--allow-change`` names
them. ``eval`` writes ``eval_report.json`` and ``eval_report.txt`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lightswe.errors import UserInputError, need

# Settings a resumed rollout may change without --allow-change: how fast it runs, not what it samples.
FREE_ON_RESUME = frozenset({"out", "concurrency", "ray", "progress"})


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sound at 0 and n successes, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(kw_only=True, slots=True)
class _RunArgs:
    """Options shared by ``rollout`` and ``eval``."""

    # Output directory: episodes, config.json (a rerun resumes the finished episodes).
    out: str
    # Policy: scripted | model:PRESET_OR_DIR | hf:DIR | openai:URL | vllm:MODEL | vllm:hf:DIR (options after '?',
    # e.g. model:tiny?seed=1).
    policy: str = "scripted"
    # tokenizer.json, or a folder holding one (default: an hf: checkpoint's own tokenizer, else the built-in byte
    # tokenizer); checked against a local model (and an openai: server's /tokenize) before any episode.
    tokenizer: str | None = None
    # Samples per task (G).
    group_size: int = 1
    # Episodes (sandboxes) in flight.
    concurrency: int = 4
    # Learner iteration (part of group ids).
    round: int = 0
    # Seed of the episodes.
    seed: int = 0
    # Tool calls per episode, format errors included.
    max_steps: int = 30
    # Tokens per episode (prompt + every turn).
    max_context: int = 32_768
    # Tokens per assistant turn.
    max_new_tokens: int = 2_048
    # Sampling temperature (> 0).
    temperature: float = 1.0
    # Tool-call format of the prompts and the parser.
    tool_format: Literal["minimax", "hermes"] = "minimax"
    # Early stop: 'N,p' stops a turn after N tokens each with probability > p; 'off'.
    early_stop: str = "3000,0.99"
    # Run episodes on Ray actors: a cluster address, or 'local' for a local cluster (a bare --ray means local).
    ray: str | None = None
    # Suspected reward hacks (code that reacts to the test runner): keep (flagged) or zero (reward 0.0).
    hack_policy: Literal["keep", "zero"] = "keep"
    # Progress bar on stderr.
    progress: bool = True

    def __post_init__(self) -> None:
        from lightswe.settings import check_out_dir

        check_out_dir(self.out)
        need(self.group_size >= 1, "--group-size", self.group_size, "must be >= 1", "e.g. 1, or 8 for RL groups")
        need(self.concurrency >= 1, "--concurrency", self.concurrency, "must be >= 1", "e.g. 4")
        need(self.round >= 0, "--round", self.round, "must be >= 0", "e.g. 0")
        need(self.max_steps >= 1, "--max-steps", self.max_steps, "must be >= 1 (tool calls per episode)", "e.g. 30")
        need(self.max_context >= 1, "--max-context", self.max_context, "must be >= 1", "e.g. 32768")
        need(self.max_new_tokens >= 1, "--max-new-tokens", self.max_new_tokens, "must be >= 1", "e.g. 2048")
        need(self.max_new_tokens <= self.max_context, "--max-new-tokens", self.max_new_tokens,
             f"must be <= --max-context ({self.max_context})", "lower it or raise --max-context")
        need(self.temperature > 0, "--temperature", self.temperature, "must be > 0", "e.g. 1.0")
        need(self.ray != "", "--ray", self.ray, "empty", "an address, or local")
        if self.tokenizer is not None:  # a tokenizer.json, or a folder holding one (a checkpoint), as load_tokenizer
            path = Path(self.tokenizer)
            need(path.is_file() or (path / "tokenizer.json").is_file(), "--tokenizer", self.tokenizer,
                 "is a directory without tokenizer.json" if path.is_dir() else "does not exist",
                 "pass a tokenizer.json file (or the checkpoint folder holding it), or leave it out for the built-in "
                 "byte tokenizer")
        early_stop_config(self.early_stop)
        from lightswe.agent.policies.spec import check_spec

        check_spec(self.policy)
        self.check_tasks()

    def check_tasks(self) -> None:
        tasks = getattr(self, "tasks", None)
        if tasks is not None:
            from lightswe.tasks.datasets import looks_like_dataset

            path = Path(tasks)
            need(path.is_file() or looks_like_dataset(tasks), "--tasks", tasks, "does not exist",
                 "pass a task file (.jsonl/.json/.parquet, e.g. tasks_out/train.jsonl from `lightswe tasks build`), "
                 "a dataset directory, or a cached dataset name owner/name:split")


@dataclass(kw_only=True, slots=True)
class RolloutArgs(_RunArgs):
    """Run agent episodes over a task set and write their trajectories."""

    # Task instances: .jsonl/.json/.parquet, a dataset directory[:split], owner/name:split[a:b] (cached), or a
    # shipped set: demo, pool, pool:train, pool:test.
    tasks: str


@dataclass(kw_only=True, slots=True)
class EvalArgs(_RunArgs):
    """Resolve rate with a 95% Wilson interval; runs the tasks first when --tasks is given."""

    # Task instances (any --tasks form of rollout) to run first; without it, summarise the episodes in --out.
    tasks: str | None = None
    # Also write SWE-bench predictions JSONL (instance_id, model_name_or_path, model_patch) here, for the
    # official harness: one per task, the first sample of the first round.
    predictions: str | None = None
    # model_name_or_path of the predictions (default: the policy that produced the episodes).
    model_name: str | None = None

    def __post_init__(self) -> None:
        _RunArgs.__post_init__(self)
        if self.predictions is not None:  # before the episodes run, not after
            from lightswe.settings import check_out_file

            check_out_file(self.predictions, "--predictions", name="preds.jsonl")
            if not self.predictions.endswith(".jsonl"):  # swebench's get_predictions_from_file: .json or .jsonl
                raise UserInputError(f"--predictions {self.predictions}: the official harness reads JSON lines "
                                     "only from a path ending in .jsonl (a .json path must hold one JSON list); "
                                     f"fix: name it e.g. {Path(self.predictions).with_suffix('.jsonl')}")


def early_stop_config(spec: str):
    """``'N,p'`` or ``'off'`` -> ``EarlyStopConfig``; raises UserInputError naming ``--early-stop``."""
    from lightswe.agent.early_stop import EarlyStopConfig

    if spec == "off":
        return EarlyStopConfig(enabled=False)
    window, _, prob = spec.partition(",")
    try:
        return EarlyStopConfig(window=int(window), min_prob=float(prob or 0.99))
    except ValueError as err:
        fix = "" if "fix:" in str(err) else "; fix: N,p such as 3000,0.99, or off"
        raise UserInputError(f"--early-stop {spec!r}: {err}{fix}") from None


def _agent_config(args: _RunArgs):
    from lightswe.agent.loop import AgentConfig

    return AgentConfig(max_steps=args.max_steps, max_context_tokens=args.max_context,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       early_stop=early_stop_config(args.early_stop))


def _run(args: _RunArgs, allow: tuple[str, ...]):
    from lightswe.settings import check_resume, write_config

    out = Path(args.out)
    check_resume(out, args, allow=allow, free=FREE_ON_RESUME, command="rollout")
    from lightswe.agent.policies.spec import check_tokenizer, make_policy, preflight, tokenizer_path
    from lightswe.agent.rollout import LocalExecutor, RolloutConfig, default_env_factory, run_rollout
    from lightswe.model import load_tokenizer
    from lightswe.tasks.datasets import load_tasks

    tasks = load_tasks(args.tasks)
    if not tasks:
        raise UserInputError(f"--tasks {args.tasks}: no task instances in the file; fix: pass a JSONL with one "
                             f"instance per line")
    config = RolloutConfig(group_size=args.group_size, round=args.round, seed=args.seed, progress=args.progress)
    agent = _agent_config(args)
    tokenizer_spec = args.tokenizer or tokenizer_path(args.policy)  # an hf: checkpoint brings its tokenizer
    check_tokenizer(args.policy, tokenizer_spec)  # a local model's ids must mean the text they meant in training
    # a server that is down, serves another model or tokenizes otherwise fails in one line before any episode, not
    # as N sandbox_error ones: spec.preflight, here for threads, on an actor with --ray (the node that talks to it)
    if args.ray:
        from lightswe.agent.ray_executor import RayExecutor

        executor = RayExecutor(policy=args.policy, tasks=tasks, num_workers=args.concurrency,
                               tokenizer=tokenizer_spec, agent=agent,
                               env_kwargs={"tool_format": args.tool_format, "hack_policy": args.hack_policy},
                               address=None if args.ray == "local" else args.ray)
    else:
        tokenizer = load_tokenizer(tokenizer_spec)
        policy = make_policy(args.policy, tokenizer=tokenizer, tasks=tasks)
        preflight(policy, tokenizer)
        env_factory = default_env_factory(tasks, tool_format=args.tool_format, hack_policy=args.hack_policy)
        executor = LocalExecutor(policy, tokenizer, env_factory=env_factory, concurrency=args.concurrency, agent=agent)
    write_config(out, args, command="rollout")
    with executor:
        summary = run_rollout(tasks, executor, out_dir=out, config=config)
    print(f"{summary.episodes} episodes in {summary.seconds:.1f}s ({summary.skipped} already done, "
          f"{summary.failed} failed): resolved {summary.resolved}, statuses {dict(summary.statuses)}", file=sys.stderr)
    return summary


def rollout(argv: list[str]) -> int:
    from lightswe.settings import parse

    args, allow = parse(RolloutArgs, argv, prog="lightswe rollout", description=RolloutArgs.__doc__)
    summary = _run(args, allow)
    from lightswe.agent.trajectory import EpisodeStatus, read_trajectories

    infra = summary.statuses.get(EpisodeStatus.SANDBOX_ERROR.value, 0)
    if infra:  # the machine's failures (never scored): say which and why, the command's own ones included
        failed = [t for t in read_trajectories(args.out) if t.status is EpisodeStatus.SANDBOX_ERROR]
        errors = Counter(" ".join(t.error.split())[:400] for t in failed if t.error.strip())
        first = errors.most_common(1)[0][0] if errors else ""
        tasks = sorted({t.task_id for t in failed})
        named = ", ".join(tasks[:3]) + (f" and {len(tasks) - 3} more" if len(tasks) > 3 else "")
        # an error that names its own fix (a task whose image cannot be built) keeps it; else the usual suspects
        fix = "" if "fix:" in first else ("; fix: check the Docker engine (`docker info`), the task images and the "
                                          "policy server")
        retry = "rerun with the same --out (graded episodes are kept, these are retried)"
        if summary.episodes and infra == summary.episodes:  # nothing was graded: the machine's failure, not the policy's
            print(f"lightswe rollout: error: every episode ({infra}) ended in sandbox_error (an infrastructure failure, "
                  f"never scored){f': {first}' if first else ''}{fix}{', then ' if fix else '; then '}{retry}",
                  file=sys.stderr)
            return 1
        print(f"lightswe rollout: warning: {infra} episode(s) of task(s) {named} ended in sandbox_error (not graded, "
              f"left out of the rate){f': {first}' if first else ''}{fix}; {retry}", file=sys.stderr)
    return 1 if summary.failed else 0


def report_of(root: Path) -> dict:
    """Resolve rate (95% Wilson interval), statuses and task count of the episodes under ``root``: overall, and
    per folder when they sit in several (a train run's steps and evaluations).

    Raises:
        UserInputError: no episode under ``root``.
    """
    from lightswe.agent.trajectory import read_trajectories
    from lightswe.agent.viewer import episode_folders, no_episodes

    def summary(episodes: list) -> dict:
        # an ungraded episode (sandbox_error: the machine's failure; no reward: a broken task) is counted apart
        # and left out of the rate, never scored as unresolved
        graded = [t for t in episodes if t.graded]
        resolved = sum(t.resolved for t in graded)
        low, high = wilson_interval(resolved, len(graded))
        return {"episodes": len(graded), "resolved": resolved,
                "resolve_rate": resolved / len(graded) if graded else 0.0, "ci95": [low, high],
                "ungraded": len(episodes) - len(graded),
                "statuses": dict(Counter(t.status.value for t in episodes)),
                "tasks": len({t.task_id for t in episodes})}

    folders = episode_folders(root)
    if not folders:
        raise no_episodes(root)
    per_folder = {str(f.relative_to(root)) or ".": list(read_trajectories(f)) for f in folders}
    report = summary([t for found in per_folder.values() for t in found])
    if len(per_folder) > 1:
        report["folders"] = {name: summary(found) for name, found in per_folder.items()}
    return report


def _line(name: str, r: dict) -> str:
    low, high = r["ci95"]
    infra = (f"; {r['ungraded']} episode(s) not graded (sandbox_error or a broken task: left out of the rate; a "
             f"rerun with the same --out retries the sandbox_error ones)") if r["ungraded"] else ""
    return (f"{name}resolve rate {r['resolve_rate']:.1%} ({r['resolved']}/{r['episodes']} graded), 95% CI "
            f"[{low:.1%}, {high:.1%}]; statuses {r['statuses']}{infra}")


def evaluate(argv: list[str]) -> int:
    from lightswe.settings import parse

    args, allow = parse(EvalArgs, argv, prog="lightswe eval", description=EvalArgs.__doc__)
    out = Path(args.out)
    if args.tasks:
        _run(args, allow)
    elif not out.is_dir():
        raise UserInputError(f"--out {args.out} does not exist; fix: pass --tasks and --policy to run the "
                             f"evaluation, or the folder of an earlier rollout or train run")
    report = report_of(out)
    lines = [_line("", report)]
    for name, r in report.get("folders", {}).items():
        lines.append(_line(f"{name}: ", r))
    (out / "eval_report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "eval_report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(report))
    if args.predictions:
        from lightswe.agent.predictions import write_predictions
        from lightswe.agent.trajectory import read_trajectories
        from lightswe.agent.viewer import episode_folders

        episodes = [t for folder in episode_folders(out) for t in read_trajectories(folder)]
        model = args.model_name or (episodes[0].policy if episodes else "") or "lightswe"
        count = write_predictions(episodes, args.predictions, model=model)
        print(f"wrote {count} SWE-bench prediction(s) to {args.predictions}", file=sys.stderr)
    return 0


def view(args: argparse.Namespace) -> int:
    from lightswe.agent.viewer import write_viewer
    from lightswe.settings import check_out_file

    if args.output is not None:
        check_out_file(args.output, "--output", name="index.html")
    path = write_viewer(args.dir, path=args.output)
    print(path)
    return 0


def register(subparsers) -> None:
    from lightswe.settings import typed_command

    typed_command(subparsers, ("rollout",), help="run agent episodes over a task set and write trajectories",
                  run=rollout)
    typed_command(subparsers, ("eval",), help="resolve rate with a 95%% Wilson interval (runs the tasks if given); "
                                             "writes eval_report.json/.txt", run=evaluate)

    p = subparsers.add_parser("view", help="write a static HTML viewer of a rollout or train directory")
    p.add_argument("dir", help="rollout or train directory (episodes in sub-folders are found)")
    p.add_argument("--output", default=None, help="HTML file (default DIR/index.html)")
    p.set_defaults(func=view)

    __import__("lightswe.agent.train_cli", fromlist=["register_train"]).register_train(subparsers)  # learner's `train`
