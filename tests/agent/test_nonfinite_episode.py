"""A sampler whose logits are not finite ends the episode as ``sandbox_error`` (reward None), with the record
written and the error named: a real tiny model with a NaN weight, at T > 0 (before: ``torch.multinomial`` raised
a RuntimeError, the episode failed and no trajectory was written) and at T = 0 (before: ``argmax`` picked a
token from NaN logits)."""

from __future__ import annotations

import pytest
import torch
from lightswe.agent.loop import AgentConfig, run_episode
from lightswe.agent.policies.model import ModelPolicy
from lightswe.agent.trajectory import EpisodeStatus, TrajectoryWriter, read_trajectories
from lightswe.envs.engine import BASE_IMAGE
from lightswe.envs.swe_env import SWEEnv, default_tasks_path
from lightswe.model import ByteTokenizer
from lightswe.tasks.instance import read_jsonl

pytestmark = pytest.mark.docker


def test_a_poisoned_model_is_an_infrastructure_failure_never_a_score(tmp_path):
    task = read_jsonl(default_tasks_path())[0]
    policy = ModelPolicy.from_spec("tiny", batch_invariant=True)
    with torch.no_grad():
        policy.model.lm_head.weight[3, 0] = torch.nan  # a damaged checkpoint: every logit row NaN
    env = SWEEnv([task], image_for=lambda _: BASE_IMAGE)
    episodes = []
    try:
        for i, temperature in enumerate((1.0, 0.0)):
            episodes.append(run_episode(env, policy, ByteTokenizer(), task_id=task.instance_id, sample_index=i,
                                        seed=i, config=AgentConfig(temperature=temperature, max_new_tokens=16)))
    finally:
        env.close()
    for t in episodes:
        assert t.status is EpisodeStatus.SANDBOX_ERROR and t.reward is None and not t.graded
        assert t.error.startswith("NonFiniteSample: the sampler: the model's logits are not finite")
        assert t.num_steps == 0 and not any(t.loss_mask)  # no token drawn from NaN logits was recorded
    with TrajectoryWriter(tmp_path, parquet=False) as writer:
        for t in episodes:
            writer.write(t)
    stored = sorted(read_trajectories(tmp_path), key=lambda t: t.sample_index)
    assert [(t.status, t.reward, t.error) for t in stored] == [(t.status, t.reward, t.error) for t in episodes]
