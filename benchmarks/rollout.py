"""Rollout throughput with the scripted policy: episodes per minute and tool calls per second at 1, 4 and 16
concurrent episodes on this machine, and where an episode's time goes.

    python benchmarks/rollout.py                       # the embedded demo task, 16 episodes per setting
    python benchmarks/rollout.py --tasks tasks.jsonl --episodes 32 --concurrency 1 4 16
    python benchmarks/rollout.py --compare /path/to/old/pythonpath --concurrency 1 4 --rounds 2

Every episode is real: a Docker sandbox per episode, the gold patch applied through the MiniMax tool-call
format, the task's tests run at submit. Time split (summed over episodes, shown per episode):
reset (a fresh container from the worker's warm pool; in code from before the pool, a warm git reset),
generate (policy), tools (the tool calls before submit), grade (the task's tests at submit), as the loop
measures them.

``--compare OLD`` runs each concurrency under ``PYTHONPATH=OLD`` (a folder whose ``lightswe`` is the old
code) and under the current one, alternating old/new ``--rounds`` times (the machine is shared: interleaving
spreads the noise over both), and prints episodes per minute side by side with new/old.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time

from interleaved import add_compare_options, python_paths, run_interleaved  # benchmarks/interleaved.py


def load_tasks(path: str | None) -> list:
    if path:
        from lightswe.tasks.instance import read_jsonl

        return read_jsonl(path)
    from lightswe.envs.swe_env import default_tasks_path
    from lightswe.tasks.instance import read_jsonl

    return read_jsonl(default_tasks_path())


def measure(tasks: list, concurrency: int, episodes: int) -> dict:
    from lightswe.agent.policies.scripted import ScriptedPolicy
    from lightswe.agent.rollout import LocalExecutor, RolloutConfig, default_env_factory, run_rollout
    from lightswe.model import ByteTokenizer

    tokenizer = ByteTokenizer()
    policy = ScriptedPolicy.from_tasks(tasks, tokenizer)
    group = max(1, -(-episodes // len(tasks)))
    out = tempfile.mkdtemp(prefix="lightswe-bench-")
    try:
        started = time.perf_counter()
        with LocalExecutor(policy, tokenizer, env_factory=default_env_factory(tasks), concurrency=concurrency) as executor:
            summary = run_rollout(tasks, executor, out_dir=out, keep=True,
                                  config=RolloutConfig(group_size=group, progress=False, parquet=False))
        wall = time.perf_counter() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)
    trajectories = summary.trajectories
    n = len(trajectories)
    keys = ("reset", "generate", "env", "grade", "total")
    split = {k: sum(t.timings.get(k, 0.0) for t in trajectories) / max(n, 1) for k in keys}
    split["tools"] = split["env"] - split["grade"]  # tool calls other than submit
    return {"concurrency": concurrency, "episodes": n, "resolved": summary.resolved, "failed": summary.failed,
            "wall_s": wall, "episodes_per_min": 60 * n / wall, "tool_calls_per_s": summary.tool_calls / wall,
            "tool_calls": summary.tool_calls, **{f"{k}_s": v for k, v in split.items()}}


HEADER = ("concurrency", "episodes", "resolved", "wall_s", "episodes_per_min", "tool_calls_per_s",
          "total_s", "reset_s", "generate_s", "tools_s", "grade_s")


def _print_rows(rows: list[dict]) -> None:
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for row in rows:
        print("| " + " | ".join(f"{row[h]:.3g}" if isinstance(row[h], float) else str(row[h]) for h in HEADER) + " |")


def compare(args) -> None:
    """Interleaved old/new runs per concurrency; prints episodes/min of each run and the ratio of medians."""
    paths = python_paths(args.compare)
    settings = [["--episodes", str(args.episodes), "--concurrency", str(c)] + (["--tasks", args.tasks] if args.tasks
                                                                                else []) for c in args.concurrency]
    runs = run_interleaved(__file__, settings, old=args.compare, rounds=args.rounds)
    results = {(which, c): [rows[0] for rows in run[which]] for c, run in zip(args.concurrency, runs)
               for which in ("old", "new")}
    print(f"old = PYTHONPATH {paths['old']}, new = PYTHONPATH {paths['new']}; {args.rounds} interleaved rounds of "
          f"{args.episodes} episodes per setting")
    print("| concurrency | old episodes/min (per round) | new episodes/min (per round) | new/old (medians) | "
          "old reset_s | new reset_s | old grade_s | new grade_s |")
    print("|---|---|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        old, new = results[("old", concurrency)], results[("new", concurrency)]
        rate = {k: [r["episodes_per_min"] for r in v] for k, v in (("old", old), ("new", new))}
        ratio = statistics.median(rate["new"]) / statistics.median(rate["old"])
        fmt = lambda xs: " / ".join(f"{x:.1f}" for x in xs)  # noqa: E731
        mean = lambda rows, k: statistics.mean(r[k] for r in rows)  # noqa: E731
        print(f"| {concurrency} | {fmt(rate['old'])} | {fmt(rate['new'])} | {ratio:.2f} | {mean(old, 'reset_s'):.3f} | "
              f"{mean(new, 'reset_s'):.3f} | {mean(old, 'grade_s'):.2f} | {mean(new, 'grade_s'):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=None)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    add_compare_options(parser)
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    tasks = load_tasks(args.tasks)
    rows = [measure(tasks, c, args.episodes) for c in args.concurrency]
    if args.json:
        print(json.dumps(rows))
        return
    _print_rows(rows)
    print("columns *_s after wall_s are mean seconds per episode: total = reset + generate + tools + grade (+ glue); "
          "reset takes a fresh container from the worker's warm pool; grade runs the tests")


if __name__ == "__main__":
    main()
