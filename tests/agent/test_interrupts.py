"""One Ctrl-C (SIGINT) stops a real ``python -m lightswe rollout`` within seconds: exit code 130, no container
left, finished episodes kept, the out folder resumable. Real engine, real task image, scripted policy.

The episode is caught where the hang was reported: at submit, with the grader blocked on the sandbox socket
(the task's test command sleeps 600 s, so without the fix the run would wait ~10 minutes).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import docker
import pytest
from lightswe.agent.trajectory import finished_episode_ids
from lightswe.envs.swe_env import default_tasks_path
from lightswe.tasks.instance import read_jsonl, write_jsonl

pytestmark = pytest.mark.docker

STOP_WITHIN_S = 10.0  # from SIGINT to exit, process start-up excluded (it was ~930 s before)


def containers_of(pid: int) -> list[dict]:
    client = docker.from_env()
    return client.api.containers(all=True, filters={"label": f"lightswe.owner_pid={pid}"})


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        found = predicate()
        if found:
            return found
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start(argv: list[str]) -> subprocess.Popen:
    """The command in its own session (a SIGINT sent to it reaches it alone), stdout and stderr captured."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=sigint_as_in_a_terminal)


def sigint_as_in_a_terminal() -> None:
    """Ctrl-C's default disposition in the child: a test suite started as a background job (`cmd &` in a script,
    as CI may run it) passes SIGINT ignored to its children, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(proc: subprocess.Popen, *waits) -> tuple[str, float]:
    """Wait (up to 300 s each) for every ``(predicate, what)`` in turn, let the run go on 1 s, ask the last
    predicate once more (it may record what it sees), send one SIGINT; returns (stderr, seconds from the signal
    to the exit). The process is killed if anything fails on the way."""
    try:
        for predicate, what in waits:
            wait_for(predicate, 300, what, proc)
        time.sleep(1.0)
        waits[-1][0]()
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        return stderr, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()


def grading_blocked(pid: int) -> bool:
    """A container of ``pid`` runs the task's (sleeping) test command."""
    client = docker.from_env()
    for info in containers_of(pid):
        try:
            processes = client.api.top(info["Id"])["Processes"] or []
        except docker.errors.APIError:
            continue
        if any("sleep 600" in " ".join(row) for row in processes):
            return True
    return False


def rollout(tasks, out, *extra) -> list[str]:
    return [sys.executable, "-m", "lightswe", "rollout", "--tasks", str(tasks), "--policy", "scripted",
            "--out", str(out), "--concurrency", "2", "--no-progress", *extra]


def test_one_sigint_during_grading_stops_rollout_cleanly_and_resumes(tmp_path):
    demo = read_jsonl(default_tasks_path())[0]
    slow = dataclasses.replace(demo, instance_id=demo.instance_id + "-slowtests",
                               test_command="sleep 600 && " + demo.test_command)
    tasks = tmp_path / "tasks.jsonl"
    write_jsonl([demo, slow], tasks)
    out = tmp_path / "run"
    proc = start(rollout(tasks, out))
    stderr, took = interrupt(proc, (lambda: out.is_dir() and finished_episode_ids(out), "the normal episode to be written"),
                             (lambda: grading_blocked(proc.pid), "the slow task's grading"))
    left = containers_of(proc.pid)
    print(f"grading blocked: stopped in {took:.1f} s")
    assert took < STOP_WITHIN_S, f"stopping took {took:.1f} s"
    assert proc.returncode == 130, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert left == [], f"containers left behind: {[c['Id'][:12] for c in left]}"
    assert finished_episode_ids(out) == {f"{demo.instance_id}@0/0"}  # the finished one kept, the cut one not

    # Resume: the same folder, the slow task's tests back to normal; only the cut episode runs again.
    write_jsonl([demo, dataclasses.replace(slow, test_command=demo.test_command)], tasks)
    done = subprocess.run(rollout(tasks, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 episodes" in done.stderr and "1 already done" in done.stderr, done.stderr[-1000:]
    assert finished_episode_ids(out) == {f"{demo.instance_id}@0/0", f"{slow.instance_id}@0/0"}


COMMANDS = {
    "rollout": ["rollout", "--tasks", "demo", "--group-size", "2", "--concurrency", "2", "--no-progress"],
    "eval": ["eval", "--tasks", "demo", "--group-size", "2", "--concurrency", "2", "--no-progress"],
    # no warm start: the first rollout (the built-in model generating in 4 threads) starts at once
    "train": ["train", "--warm-start-steps", "0"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_sigint_mid_episode_stops_each_command(tmp_path, command):
    """Ctrl-C once the first sandbox runs: the episode threads may be starting containers, running tools or
    (train) generating with the model on the CPU."""
    argv = [sys.executable, "-m", "lightswe", *COMMANDS[command], "--out", str(tmp_path / "run")]
    proc = start(argv)
    stderr, took = interrupt(proc, (lambda: containers_of(proc.pid), "a sandbox container"))
    print(f"{command}: stopped in {took:.1f} s")
    assert took < STOP_WITHIN_S, f"stopping took {took:.1f} s"
    assert proc.returncode == 130, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert containers_of(proc.pid) == []


def descendants(pid: int) -> set[int]:
    """Process ids under ``pid`` (from /proc), the Ray cluster and its actor workers for a local cluster."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.slow
def test_sigint_stops_a_rollout_on_ray(tmp_path):
    """The same on a local Ray cluster: actors close their sandboxes (containers owned by the actor processes)."""
    pytest.importorskip("ray")
    argv = [sys.executable, "-m", "lightswe", *COMMANDS["rollout"], "--ray", "local", "--out", str(tmp_path / "run")]
    proc = start(argv)
    client = docker.from_env()
    owners: set[str] = set()

    def ours() -> list[dict]:  # containers owned by a process of this run (the actors)
        owners.update(str(p) for p in descendants(proc.pid))
        return [c for c in client.api.containers(all=True, filters={"label": "lightswe.sandbox=1"})
                if (c.get("Labels") or {}).get("lightswe.owner_pid") in owners]

    stderr, took = interrupt(proc, (ours, "an actor's sandbox container"))
    assert proc.returncode == 130, (proc.returncode, stderr[-2000:])
    assert took < 20, f"stopping took {took:.1f} s"  # Ray's own shutdown included
    left = [c for c in client.api.containers(all=True, filters={"label": "lightswe.sandbox=1"})
            if (c.get("Labels") or {}).get("lightswe.owner_pid") in owners]
    assert left == [], [c["Id"][:12] for c in left]
    print(f"ray: stopped in {took:.1f} s")
