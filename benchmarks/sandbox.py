"""Sandbox and environment latencies on the embedded demo task, side by side with mini-swe-agent or with
another lightswe checkout.

    python benchmarks/sandbox.py [--repeats 20] [--episodes 6] [--mini-python PATH]
    python benchmarks/sandbox.py --compare /path/to/old/pythonpath [--rounds 2]   # before/after table

Rows: container start (a ready sandbox: container, disk volume, runner), ``env.reset()`` to the same task
with the pool warm (a fresh container from the pool; in code without a pool, a git reset of the warm
sandbox) and back to back (the pool has had no time to refill: the worst case), one bash tool call through
``env.step`` (parse, exec, sanitize), a file view, the task's test run (grading), episodes per minute with
the scripted agent (fix or no fix), and the exec of ``true``: lightswe's runner, a plain Engine-API exec, and
mini-swe-agent's ``DockerEnvironment`` (``docker exec`` through the CLI) on the same image. mini-swe-agent
runs from its own virtual environment (``~/.cache/lightswe/mini-swe-agent-venv``, made with ``pip install
mini-swe-agent`` on first use) so that its dependencies do not touch this one. Medians; times in ms.

``--compare OLD`` runs this script under ``PYTHONPATH=OLD`` (a folder whose ``lightswe`` is the old code) and
under the current one, alternating ``--rounds`` times (the machine is shared: interleaving spreads the noise
over both), and prints each row's medians side by side.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import subprocess
import sys
import time

import gymnasium as gym

import lightswe  # noqa: F401 - registers the ids
from lightswe.envs.demo import scripted_actions
from lightswe.envs.engine import CACHE_DIR
from lightswe.envs.grading import grade
from lightswe.envs.sandbox import Sandbox
from lightswe.envs.tool_calls import ToolCall, format_minimax

from interleaved import add_compare_options, python_paths, run_interleaved  # benchmarks/interleaved.py

MINI_VENV = CACHE_DIR / "mini-swe-agent-venv"
_MINI = r"""
import json, subprocess, sys, time
from minisweagent.environments.docker import DockerEnvironment
image, repeats = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
env = DockerEnvironment(image=image, cwd="/testbed", run_args=["--rm", "--network", "none", "--label", "lightswe.bench=1"])
start = time.perf_counter() - t
out = env.execute({"command": "true"})
assert out["returncode"] == 0, out
times = []
for _ in range(repeats):
    t = time.perf_counter()
    env.execute({"command": "true"})
    times.append(time.perf_counter() - t)
subprocess.run(["docker", "rm", "-f", env.container_id], capture_output=True)
env.container_id = None
print(json.dumps({"start": start, "true": times}))
"""


def _ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def mini_python(given: str | None) -> str | None:
    if given:
        return given
    python = MINI_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing mini-swe-agent into {MINI_VENV} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(MINI_VENV)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "mini-swe-agent"], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"mini-swe-agent could not be installed: {done.stderr[-500:]}", file=sys.stderr)
            return None
    return str(python)


def measure(args) -> list[tuple[str, float, str]]:
    """(row, value, target) for this process's lightswe; see the module docstring."""
    env = gym.make("lightswe/SWE-v0")
    env.reset(seed=0)
    inner = env.unwrapped
    task = inner.task
    pool = getattr(inner, "pool", None)  # None: code from before the warm pool (git reset)
    config = inner.sandbox_config(task) if pool is not None else inner.sandbox.config
    rows: list[tuple[str, float, str]] = []

    starts = []
    for _ in range(min(args.repeats, 8)):
        start = time.perf_counter()
        box = Sandbox(config)
        box.exec("true", timeout=30)
        starts.append(time.perf_counter() - start)
        box.close()
    rows.append(("container start (ready sandbox)", _ms(starts), ""))

    def dirty_then_reset(wait: bool) -> float:
        inner.sandbox.exec("echo x >> toolz/itertoolz.py; touch junk.py; git stash -q; echo y > /tmp/y", timeout=10)
        if wait and pool is not None:
            pool.wait_ready(config)
        start = time.perf_counter()
        env.reset(options={"task_id": task.instance_id})
        return time.perf_counter() - start
    rows.append(("env.reset(), pool warm" if pool is not None else "env.reset(), warm git reset",
                 _ms([dirty_then_reset(True) for _ in range(args.repeats)]), "< 150"))
    rows.append(("env.reset(), back to back (pool drained)" if pool is not None else "env.reset(), back to back",
                 _ms([dirty_then_reset(False) for _ in range(min(args.repeats, 8))]), ""))
    if pool is not None:
        pool.wait_ready(config)

    bash = format_minimax([ToolCall(name="bash", arguments={"command": "ls"})])
    rows.append(("bash tool call via env.step", _ms(_timed(lambda: env.step(bash), args.repeats)), ""))
    view = ToolCall(name="view", arguments={"path": "toolz/itertoolz.py", "start_line": 380, "end_line": 420})
    rows.append(("file view (40 lines) via env.step", _ms(_timed(lambda: env.step(view), args.repeats)), ""))
    if pool is not None and "fresh" in inspect.signature(grade).parameters:  # grading in a pool container
        tests = _timed(lambda: grade(inner.sandbox, task, fresh=inner.fresh_sandbox, release=pool.discard), 3)
    else:
        tests = _timed(lambda: grade(inner.sandbox, task), 3)
    rows.append((f"test run ({len(task.FAIL_TO_PASS) + len(task.PASS_TO_PASS)} tests, grading)", _ms(tests), ""))

    start = time.perf_counter()
    rewards = []
    for episode in range(args.episodes):
        env.reset(seed=episode)
        for action in scripted_actions(task, fix=episode % 2 == 0):
            _, reward, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                rewards.append(reward)
                break
    per_minute = args.episodes / (time.perf_counter() - start) * 60
    rows.append((f"episodes/minute, scripted agent (rewards {rewards})", per_minute, ""))

    box = inner.sandbox
    rows.append(("exec of `true` (tool-call overhead)",
                 _ms([box.exec("true", timeout=10).duration_s for _ in range(args.repeats * 3)]), "< 30"))
    api = box.api
    def engine_exec() -> None:
        exec_id = api.exec_create(box.container_id, ["true"], user="agent")["Id"]
        api.exec_start(exec_id)
        api.exec_inspect(exec_id)
    rows.append(("  reference: one Engine-API exec, no runner", _ms(_timed(engine_exec, args.repeats)), ""))
    env.close()
    return rows


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))


def compare(args) -> None:
    """Run this script under the old and the current PYTHONPATH, alternating, and print both columns."""
    paths = python_paths(args.compare)
    argv = ["--repeats", str(args.repeats), "--episodes", str(args.episodes)]
    runs = run_interleaved(__file__, [argv], old=args.compare, rounds=args.rounds)[0]

    def column(which: str, index: int) -> str:
        values = [run[index][1] for run in runs[which] if index < len(run)]
        return " / ".join(f"{v:.1f}" if v < 100 else f"{v:.0f}" for v in values)
    rows = [(runs["new"][0][i][0] + f"  [old: {runs['old'][0][i][0]}]" if runs["old"][0][i][0] != runs["new"][0][i][0]
             else runs["new"][0][i][0], column("old", i), column("new", i), runs["new"][0][i][2])
            for i in range(len(runs["new"][0]))]
    print(f"old = PYTHONPATH {paths['old']}, new = PYTHONPATH {paths['new']}; {args.rounds} interleaved rounds "
          "(one value per round); medians in ms unless the row says otherwise")
    _table(("measurement", "old", "new", "target"), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--mini-python", default=None, help="python of an environment with mini-swe-agent")
    parser.add_argument("--no-mini", action="store_true", help="skip the mini-swe-agent column")
    add_compare_options(parser)
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    rows = measure(args)
    if args.json:
        print(json.dumps(rows))
        return
    mini, mini_start = "", ""
    python = None if args.no_mini else mini_python(args.mini_python)
    if python:
        image = ensure_demo_image()
        done = subprocess.run([python, "-c", _MINI, image, str(args.repeats * 3)], capture_output=True, text=True)
        if done.returncode == 0:
            result = json.loads(done.stdout.strip().splitlines()[-1])
            mini, mini_start = f"{_ms(result['true']):.1f}", f"{result['start'] * 1000:.0f}"
        else:
            print(f"mini-swe-agent run failed: {done.stderr[-800:]}", file=sys.stderr)
    table = []
    for name, value, target in rows:
        other = mini_start if name.startswith("container start") else mini if name.startswith("exec of") else ""
        table.append((name, f"{value:.1f}" if value < 100 else f"{value:.0f}", other, target))
    _table(("measurement (median, ms)", "lightswe", "mini-swe-agent", "target"), table)


def ensure_demo_image() -> str:
    from lightswe.envs.swe_env import default_tasks_path
    from lightswe.tasks.images import ensure_instance_image
    from lightswe.tasks.instance import read_jsonl

    return ensure_instance_image(read_jsonl(default_tasks_path())[0])


if __name__ == "__main__":
    main()
