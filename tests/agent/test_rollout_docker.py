"""The rollout runner for real: kill -9 mid-run then resume, and the same runner on a local Ray cluster."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import docker
import pytest
from lightswe.agent.trajectory import EpisodeStatus, read_trajectories
from lightswe.envs.swe_env import default_tasks_path
from lightswe.tasks.instance import read_jsonl

pytestmark = pytest.mark.docker


def containers_of(pids: set[int]) -> list[str]:
    client = docker.from_env()
    return [c["Id"] for c in client.api.containers(all=True, filters={"label": "lightswe.sandbox=1"})
            if (c.get("Labels") or {}).get("lightswe.owner_pid") in {str(p) for p in pids}]


def rollout_command(out) -> list[str]:
    return [sys.executable, "-m", "lightswe", "rollout", "--tasks", str(default_tasks_path()), "--policy", "scripted",
            "--out", str(out), "--group-size", "5", "--concurrency", "2", "--no-progress"]


def test_kill_9_mid_run_loses_no_finished_episode_and_leaves_no_container(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(rollout_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    before = []
    while time.monotonic() < deadline and first.poll() is None:
        before = list(read_trajectories(out)) if out.is_dir() else []
        if before:
            break
        time.sleep(0.2)
    assert first.poll() is None, "the rollout ended before it could be killed: " + first.stderr.read().decode()[-2000:]
    assert before, "no episode finished within the deadline"
    first.send_signal(signal.SIGKILL)
    first.wait()  # reap it, so that its pid is really gone
    survived = {t.episode_id: t for t in read_trajectories(out)}  # readable (a torn line at most is skipped)
    assert {t.episode_id for t in before} <= set(survived) and len(survived) < 5
    assert containers_of({first.pid}), "the killed runner held sandboxes (else this test shows nothing)"

    second = subprocess.run(rollout_command(out), capture_output=True, text=True, timeout=420, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{len(survived)} already done" in second.stderr
    final = {t.episode_id: t for t in read_trajectories(out)}
    task = read_jsonl(default_tasks_path())[0].instance_id
    assert set(final) == {f"{task}@0/{i}" for i in range(5)}
    for episode_id, trajectory in survived.items():  # finished episodes kept as they were
        assert final[episode_id] == trajectory
    assert all(t.status is EpisodeStatus.SUBMITTED and t.reward == 1.0 for t in final.values())
    assert containers_of({first.pid, os.getpid()}) == []  # the resumed run reaped the killed run's containers


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (pip install 'lightswe[ray]')")
def test_rollout_on_a_local_ray_cluster(tmp_path):
    import ray
    from lightswe.agent.ray_executor import RayExecutor
    from lightswe.agent.rollout import RolloutConfig, run_rollout

    tasks = read_jsonl(default_tasks_path())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayExecutor(policy="scripted", tasks=tasks, num_workers=2) as executor:
            workers = ray.get([actor.where.remote() for actor in executor.actors])
            summary = run_rollout(tasks, executor, out_dir=tmp_path, keep=True,
                                  config=RolloutConfig(group_size=3, round=7, progress=False))
        assert len({pid for _, pid in workers}) == 2 and summary.episodes == 3 and summary.resolved == 3 and summary.failed == 0
        stored = sorted(read_trajectories(tmp_path), key=lambda t: t.sample_index)
        assert [t.episode_id for t in stored] == [f"{tasks[0].instance_id}@7/{i}" for i in range(3)]
        assert all(t.reward == 1.0 and t.num_steps == 4 for t in stored)
    finally:
        ray.shutdown()
    assert containers_of({os.getpid()} | {pid for _, pid in workers}) == []  # actors closed their sandboxes


@pytest.mark.slow  # a second local Ray cluster and 4 graded episodes: ~60 s on 2 loaded cores
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (pip install 'lightswe[ray]')")
def test_a_ray_worker_killed_mid_episode_is_replaced_and_its_episode_rerun(tmp_path):
    """kill -9 of one actor's process while the rollout runs (attack9; before the fix the dead actor went back to
    the idle queue and failed every episode handed to it at once, so most of the rollout 'failed', and its
    containers stayed until the next run): a new actor reruns the episode, every episode is written once, none
    failed, and the dead actor's containers are reaped."""
    import threading

    import ray
    from lightswe.agent.ray_executor import RayExecutor
    from lightswe.agent.rollout import RolloutConfig, run_rollout

    tasks = read_jsonl(default_tasks_path())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayExecutor(policy="scripted", tasks=tasks, num_workers=2) as executor:
            workers = ray.get([actor.where.remote() for actor in executor.actors])
            victim = workers[0][1]
            killer = threading.Timer(2.5, os.kill, args=(victim, signal.SIGKILL))
            killer.start()
            summary = run_rollout(tasks, executor, out_dir=tmp_path,
                                  config=RolloutConfig(group_size=4, progress=False))
            killer.join()
            restarted = executor.restarted
        assert (summary.episodes, summary.failed, summary.resolved) == (4, 0, 4)
        assert restarted == 1
        stored = [t.episode_id for t in read_trajectories(tmp_path)]
        assert sorted(stored) == [f"{tasks[0].instance_id}@0/{i}" for i in range(4)]  # each once
    finally:
        ray.shutdown()
    assert containers_of({victim}) == []  # the dead actor's sandboxes reaped
