"""The RL loop with episodes on Ray actors (a local cluster): each step's actors load that step's weights."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import docker
import pytest
from lightswe.agent.advantages import AdvantageConfig
from lightswe.agent.learner import LearnerConfig
from lightswe.agent.loop import AgentConfig
from lightswe.agent.metrics import read_metrics
from lightswe.agent.train import SHORT_PROMPT, TrainConfig, WarmStartConfig, train
from lightswe.agent.trajectory import read_trajectories

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="pip install 'lightswe[ray]'")]


def sandboxes() -> dict[str, int]:
    """Labelled sandbox containers -> the pid of the process that made them."""
    found = docker.from_env().api.containers(all=True, filters={"label": "lightswe.sandbox=1"})
    return {c["Id"]: int((c.get("Labels") or {}).get("lightswe.owner_pid") or -1) for c in found}


def descendants(root: int) -> set[int]:
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - out
        out |= frontier
    return out


class SandboxWatch(threading.Thread):
    """Records the sandboxes made by processes under this one (the Ray actors) while the run goes on."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.3):
            ours = descendants(os.getpid())
            self.seen.update({cid: pid for cid, pid in sandboxes().items() if pid in ours})


def test_train_on_local_ray_actors_syncs_weights_and_leaves_no_container(tmp_path):
    import ray

    run = tmp_path / "run"
    # A random tiny model earns reward 0 everywhere, so equal-reward groups are kept (advantage 0) for the CISPO
    # update to run, and weight decay makes that update move the weights: step 2's actors must load the new ones.
    cfg = TrainConfig(out_dir=str(run), steps=2, tasks_per_step=1, group_size=2, concurrency=2, eval_tasks="",
                      warm_start=WarmStartConfig(enabled=False), ray="local",
                      advantages=AdvantageConfig(filter_equal=False),
                      learner=LearnerConfig(lr=0.05, weight_decay=1.0, minibatches=1, micro_batch_size=2),
                      agent=AgentConfig(max_steps=1, max_context_tokens=1024, max_new_tokens=24, max_format_errors=1,
                                        temperature=0.5, system_prompt=SHORT_PROMPT))
    watch = SandboxWatch()
    watch.start()
    try:
        train(cfg)
    finally:
        watch.stop.set()
        watch.join()
        ray.shutdown()
    assert not ray.is_initialized()  # the run stopped the cluster it started
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for step, row in zip((1, 2), rows):
        trajs = list(read_trajectories(run / "rollouts" / f"step-{step:04d}"))
        assert len(trajs) == 2 and row["episodes"] == 2
        # sampled by actors that loaded this step's weights (the local path names the policy 'model:tiny')
        assert {t.policy for t in trajs} == {f"model:{run / 'rollouts' / f'weights-{step}'}"}
        assert {t.policy_version for t in trajs} == {step - 1}
        assert "loss" in row and row["optimizer_steps"] == 1  # the CISPO update ran
        # sampler (actor) vs learner log-probs of the same tokens: equal only if the actor had the learner's weights
        assert row["logprob_mismatch_abs"] < 1e-3, row
    assert (run / "checkpoints" / "step-000002").is_dir() and not list((run / "rollouts").glob("weights-*"))
    # episodes ran in actor processes (not this one), and every sandbox they made is gone
    assert watch.seen and os.getpid() not in set(watch.seen.values())
    assert set(watch.seen) & set(sandboxes()) == set()
