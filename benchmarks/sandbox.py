"""Sandbox and environment latencies on the embedded demo task, side by side with mini-swe-agent.

    python benchmarks/sandbox.py [--repeats 20] [--episodes 6] [--mini-python PATH]

Rows: container start (a ready sandbox: container, runner, base commit read), warm reset (git back to the
base commit), one bash tool call through ``env.step`` (parse, exec, sanitize), a file view, the task's test
run (grading: restore, pytest with JUnit XML), episodes per minute with the scripted agent (fix or no fix),
and the exec of ``true``: lightswe's runner, a plain Engine-API exec, and mini-swe-agent's
``DockerEnvironment`` (``docker exec`` through the CLI) on the same image. mini-swe-agent runs from its own
virtual environment (``~/.cache/lightswe/mini-swe-agent-venv``, made with ``pip install mini-swe-agent`` on
first use) so that its dependencies do not touch this one. Medians; times in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym

import lightswe  # noqa: F401 - registers the ids
from lightswe.envs.demo import scripted_actions
from lightswe.envs.engine import CACHE_DIR
from lightswe.envs.grading import grade
from lightswe.envs.sandbox import Sandbox, SandboxConfig
from lightswe.envs.tool_calls import ToolCall, format_minimax

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--mini-python", default=None, help="python of an environment with mini-swe-agent")
    args = parser.parse_args()

    env = gym.make("lightswe/SWE-v0")
    env.reset(seed=0)
    inner = env.unwrapped
    task, image = inner.task, inner.sandbox.config.image
    rows: list[tuple[str, str, str, str]] = []

    starts = []
    for _ in range(min(args.repeats, 8)):
        start = time.perf_counter()
        box = Sandbox(SandboxConfig(image=image))
        starts.append(time.perf_counter() - start)
        box.close()
    rows.append(("container start (ready sandbox)", f"{_ms(starts):.0f}", "", ""))

    box = inner.sandbox
    def dirty_then_reset() -> float:
        box.exec("echo x >> toolz/itertoolz.py; touch junk.py; mkdir -p d && touch d/y", timeout=10)
        return box.reset()
    resets = [dirty_then_reset() for _ in range(args.repeats)]
    rows.append(("warm reset (git reset + clean)", f"{_ms(resets):.0f}", "", "< 150"))

    bash = format_minimax([ToolCall(name="bash", arguments={"command": "ls"})])
    rows.append(("bash tool call via env.step", f"{_ms(_timed(lambda: env.step(bash), args.repeats)):.1f}", "", ""))
    view = ToolCall(name="view", arguments={"path": "toolz/itertoolz.py", "start_line": 380, "end_line": 420})
    rows.append(("file view (40 lines) via env.step", f"{_ms(_timed(lambda: env.step(view), args.repeats)):.1f}", "", ""))
    tests = _timed(lambda: grade(box, task), 3)
    rows.append((f"test run ({len(task.FAIL_TO_PASS) + len(task.PASS_TO_PASS)} tests, grading)", f"{_ms(tests):.0f}", "", ""))

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
    rows.append((f"episodes/minute, scripted agent (rewards {rewards})", f"{per_minute:.0f}", "", ""))

    ours = _ms([box.exec("true", timeout=10).duration_s for _ in range(args.repeats * 3)])
    api = box.api
    def engine_exec() -> None:
        exec_id = api.exec_create(box.container_id, ["true"], user="agent")["Id"]
        api.exec_start(exec_id)
        api.exec_inspect(exec_id)
    plain = _ms(_timed(engine_exec, args.repeats))
    mini, mini_start = "n/a", "n/a"
    python = mini_python(args.mini_python)
    if python:
        done = subprocess.run([python, "-c", _MINI, image, str(args.repeats * 3)], capture_output=True, text=True)
        if done.returncode == 0:
            result = json.loads(done.stdout.strip().splitlines()[-1])
            mini, mini_start = f"{_ms(result['true']):.1f}", f"{result['start'] * 1000:.0f}"
        else:
            print(f"mini-swe-agent run failed: {done.stderr[-800:]}", file=sys.stderr)
    rows.append(("exec of `true` (tool-call overhead)", f"{ours:.1f}", mini, "< 30"))
    rows.append(("  reference: one Engine-API exec, no runner", f"{plain:.1f}", "", ""))
    rows[0] = (rows[0][0], rows[0][1], mini_start, "")
    env.close()

    header = ("measurement (median, ms)", "lightswe", "mini-swe-agent", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
