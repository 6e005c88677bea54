"""The RL loop with episodes on Ray actors (a local cluster): each step's actors load that step's weights."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import docker
import pytest
import torch
from lightswe.agent.loop import AgentConfig
from lightswe.agent.metrics import read_metrics
from lightswe.agent.sampling import SamplerConfig
from lightswe.agent.task_stream import TaskStreamConfig
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
    from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

    run = tmp_path / "run"
    # A random tiny model earns reward 0 everywhere: no group carries signal and no update runs. To see that each
    # step's actors sample with the learner's current weights, step 1's checkpoint is edited (every weight moved)
    # before the run resumes for step 2: step 2's sampler log-probs must be those of the edited weights.
    cfg = TrainConfig(out_dir=str(run), steps=1, tasks_per_step=1, group_size=2, data=TaskStreamConfig(eval_tasks=""),
                      warm_start=WarmStartConfig(steps=0), sampler=SamplerConfig(ray="local", concurrency=2),
                      agent=AgentConfig(max_steps=1, max_context_tokens=1024, max_new_tokens=24, max_format_errors=1,
                                        temperature=0.5, system_prompt=SHORT_PROMPT))
    watch = SandboxWatch()
    watch.start()
    try:
        train(cfg)
        ckpt = run / "checkpoints" / "step-000001" / "model.pt"
        start = torch.load(ckpt, weights_only=True)
        generator = torch.Generator().manual_seed(0)
        edited = {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                  for k, v in start.items()}
        torch.save(edited, ckpt)
        cfg.steps = 2
        train(cfg, allow_change=("steps",))
    finally:
        watch.stop.set()
        watch.join()
        ray.shutdown()
    assert not ray.is_initialized()  # the run stopped the cluster it started
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all("loss" not in r for r in rows)  # nothing to learn from
    for step, row in zip((1, 2), rows):
        trajs = list(read_trajectories(run / "rollouts" / f"step-{step:04d}"))
        assert len(trajs) == 2 and row["episodes"] == 2
        # sampled by actors that loaded this step's weights (the local path names the policy 'model:tiny')
        assert {t.policy for t in trajs} == {f"model:{run / 'rollouts' / f'weights-{step}'}"}
        assert {t.policy_version for t in trajs} == {step - 1}

    def mismatch(weights: dict, trajs: list) -> float:  # sampler vs recomputed log-probs of the sampled tokens
        model = MiniMaxForCausalLM(MiniMaxConfig.load(run / "final"))
        model.load_state_dict(weights)
        worst = 0.0
        for t in trajs:
            with torch.no_grad():
                logp = model.token_logprobs(torch.tensor([t.token_ids]), temperature=0.5)[0]
            mask = torch.tensor(t.loss_mask, dtype=torch.bool)
            worst = max(worst, (logp[mask] - torch.tensor(t.logprobs)[mask]).abs().max().item())
        return worst

    step2 = list(read_trajectories(run / "rollouts" / "step-0002"))
    assert mismatch(edited, step2) < 1e-3 and mismatch(start, step2) > 1e-2  # the actors had the learner's weights
    assert (run / "checkpoints" / "step-000002").is_dir() and not list((run / "rollouts").glob("weights-*"))
    # episodes ran in actor processes (not this one), and every sandbox they made is gone
    assert watch.seen and os.getpid() not in set(watch.seen.values())
    assert set(watch.seen) & set(sandboxes()) == set()
