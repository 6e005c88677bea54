"""Rollout throughput with the scripted policy: episodes per minute and tool calls per second at 1, 4 and 16
concurrent episodes on this machine, and where an episode's time goes.

    python benchmarks/rollout.py                       # the embedded demo task, 16 episodes per setting
    python benchmarks/rollout.py --tasks tasks.jsonl --episodes 32 --concurrency 1 4 16

Every episode is real: a Docker sandbox per episode, the gold patch applied through the MiniMax tool-call
format, the task's tests run at submit. Time split (summed over episodes, shown per episode):
reset (one container per worker, started at its first episode, warm git reset after), generate (policy), tools
(the tool calls before submit), grade (the task's tests at submit), as the loop measures them.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=None)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    tasks = load_tasks(args.tasks)
    rows = [measure(tasks, c, args.episodes) for c in args.concurrency]
    header = ("concurrency", "episodes", "resolved", "wall_s", "episodes_per_min", "tool_calls_per_s",
              "total_s", "reset_s", "generate_s", "tools_s", "grade_s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{row[h]:.3g}" if isinstance(row[h], float) else str(row[h]) for h in header) + " |")
    print("columns *_s after wall_s are mean seconds per episode: total = reset + generate + tools + grade (+ glue); "
          "reset starts a container for a worker's first episode and warm-resets (git) after; grade runs the tests")


if __name__ == "__main__":
    main()
