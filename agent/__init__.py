"""lightswe.agent: the agent loop, policies, rollouts and trajectories (the learner lives in its own modules).

The Python rollout API (what ``lightswe rollout`` runs)::

    from lightswe.agent import (LocalExecutor, RolloutConfig, ScriptedPolicy, default_env_factory, make_policy,
                                read_trajectories, run_rollout)
    from lightswe.model import load_tokenizer
    from lightswe.tasks import load_tasks

    tasks = load_tasks("demo")                                   # or "pool:train", or a JSONL path
    tokenizer = load_tokenizer()
    policy = ScriptedPolicy.from_tasks(tasks, tokenizer)         # or make_policy("openai:http://...", ...)
    with LocalExecutor(policy, tokenizer, env_factory=default_env_factory(tasks), concurrency=2) as executor:
        summary = run_rollout(tasks, executor, out_dir="runs/r1", config=RolloutConfig(group_size=2))
    summary.resolve_rate, [t.reward for t in read_trajectories("runs/r1")]

Nothing here imports torch, Docker or Ray at import time; the built-in model's policy (``ModelPolicy``) and the
Ray executor load their dependencies when used.
"""

from lightswe.agent.loop import AgentConfig, run_episode
from lightswe.agent.policies.base import Policy, Sample, SamplingParams
from lightswe.agent.policies.scripted import ScriptedPolicy
from lightswe.agent.policies.spec import make_policy
from lightswe.agent.ray_executor import RayExecutor
from lightswe.agent.rollout import (EpisodeJob, Executor, LocalExecutor, RolloutConfig, RolloutSummary,
                                    default_env_factory, plan_jobs, run_rollout)
from lightswe.agent.trajectory import EpisodeStatus, Trajectory, finished_episode_ids, read_trajectories

__all__ = [
    "AgentConfig", "EpisodeJob", "EpisodeStatus", "Executor", "LocalExecutor", "Policy", "RayExecutor",
    "RolloutConfig", "RolloutSummary", "Sample", "SamplingParams", "ScriptedPolicy", "Trajectory",
    "default_env_factory", "finished_episode_ids", "make_policy", "plan_jobs", "read_trajectories",
    "run_episode", "run_rollout",
]
