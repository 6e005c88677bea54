"""Many episodes at once: G samples per task, written as they finish, resumable, on threads or on Ray.

The runner keeps ``concurrency`` episodes in flight (each holds one sandbox; the built-in model batches their
generations), writes every finished trajectory before counting it, and skips episode ids already in the output
directory, so a killed run resumes where it stopped and loses at most the episodes in flight. Containers
left by a killed run are removed by the sandbox reaper when the next run starts.

Executors run one ``EpisodeJob`` and return a future of its ``Trajectory``: ``LocalExecutor`` on threads,
``lightswe.agent.ray_executor.RayExecutor`` on Ray actors (one sandbox worker per actor, on any node with a
Docker engine). The runner itself is the same.

Example::

    policy = ScriptedPolicy.from_tasks(tasks, tokenizer)
    with LocalExecutor(policy, tokenizer, env_factory=default_env_factory(tasks), concurrency=4) as executor:
        summary = run_rollout(tasks, executor, out_dir="runs/r1", config=RolloutConfig(group_size=4))
    summary.resolve_rate
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lightswe.agent.chat import Tokenizer
from lightswe.agent.loop import AgentConfig, run_episode
from lightswe.agent.policies.base import Policy
from lightswe.agent.trajectory import Trajectory, TrajectoryWriter, finished_episode_ids

log = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class RolloutConfig:
    group_size: int = 1  # G samples per task (group-relative advantages)
    round: int = 0  # the learner's iteration; part of every group id so rounds never collide
    draw: int = 0  # dynamic sampling's extra draws within a round (group ids ``<task>@<round>~<draw>``)
    seed: int = 0
    shard_size: int = 64
    parquet: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")


@dataclass(kw_only=True, slots=True)
class EpisodeJob:
    task: object  # a lightswe.tasks.TaskInstance
    group_id: str
    sample_index: int
    seed: int

    @property
    def episode_id(self) -> str:
        return f"{self.group_id}/{self.sample_index}"


@dataclass(kw_only=True, slots=True)
class RolloutSummary:
    episodes: int = 0  # finished in this run
    skipped: int = 0  # already on disk (resume)
    resolved: int = 0
    failed: int = 0  # episodes whose worker raised (not written; a resume retries them)
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    tool_calls: int = 0
    trajectories: list[Trajectory] = field(default_factory=list)

    @property
    def resolve_rate(self) -> float:
        return self.resolved / self.episodes if self.episodes else 0.0


class Executor(Protocol):
    concurrency: int

    def submit(self, job: EpisodeJob) -> Future: ...

    def shutdown(self) -> None: ...


def plan_jobs(tasks: Sequence, config: RolloutConfig) -> list[EpisodeJob]:
    """Every (task, sample) of a round; group id ``<task id>@<round>`` is shared by the G samples of a task
    (``<task id>@<round>~<draw>`` in a later draw of the round, which may hold the same task again).

    A task listed twice (a step that crosses an epoch boundary) gets a second group ``<task id>@<round>.1``:
    its episodes must not share ids with the first copy's (resume would skip them as done)."""
    seen: dict[str, int] = {}
    jobs = []
    for t, task in enumerate(tasks):
        copy = seen[task.instance_id] = seen.get(task.instance_id, -1) + 1
        group_id = (f"{task.instance_id}@{config.round}" + (f"~{config.draw}" if config.draw else "")
                    + (f".{copy}" if copy else ""))
        jobs += [EpisodeJob(task=task, group_id=group_id, sample_index=i, seed=config.seed + 1_000 * t + i)
                 for i in range(config.group_size)]
    return jobs


def default_env_factory(tasks: Sequence, **env_kwargs) -> Callable:
    """``() -> env`` over the rollout's tasks: the registered SWE environment, unwrapped (the loop owns the
    step budget). One env per worker: each episode gets an untouched container from the env's warm pool (nothing of the previous episode survives)."""

    def make():
        import gymnasium
        import lightswe.envs.registration  # noqa: F401 - registers the ids

        return gymnasium.make("lightswe/SWE-v0", tasks=list(tasks), **env_kwargs).unwrapped

    return make


def run_job(job: EpisodeJob, policy: Policy, tokenizer: Tokenizer, env, agent: AgentConfig) -> Trajectory:
    """One episode in ``env`` (reset to the job's task)."""
    return run_episode(env, policy, tokenizer, task_id=job.task.instance_id, config=agent, group_id=job.group_id,
                       sample_index=job.sample_index, seed=job.seed)


class LocalExecutor:
    """Episodes on threads of this process, one environment (one sandbox) per thread: ``concurrency`` bounds
    the sandboxes alive at once. ``shutdown`` closes them (removes the containers)."""

    def __init__(self, policy: Policy, tokenizer: Tokenizer, *, env_factory: Callable, concurrency: int = 4,
                 agent: AgentConfig | None = None) -> None:
        required = [p for p in inspect.signature(env_factory).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if required:
            raise TypeError(f"env_factory must take no arguments and return an env over all the rollout's tasks "
                            f"(episodes reset it with options={{'task_id': ...}}); got one taking {required[0].name!r}. "
                            "Use default_env_factory(tasks).")
        self.policy, self.tokenizer, self.concurrency = policy, tokenizer, concurrency
        self.env_factory, self.agent = env_factory, agent or AgentConfig()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="episode")
        self._local = threading.local()
        self._envs: list = []
        self._lock = threading.Lock()

    def _env(self):
        env = getattr(self._local, "env", None)
        if env is None:
            env = self._local.env = self.env_factory()
            with self._lock:
                self._envs.append(env)
        return env

    def _run(self, job: EpisodeJob) -> Trajectory:
        return run_job(job, self.policy, self.tokenizer, self._env(), self.agent)

    def submit(self, job: EpisodeJob) -> Future:
        return self._pool.submit(self._run, job)

    def shutdown(self) -> None:
        """Cancel queued episodes, close every environment (in-flight episodes end with a sandbox error)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._close_envs()
        self._pool.shutdown(wait=True)
        self._close_envs()  # again: an episode that was running may have restarted its sandbox

    def _close_envs(self) -> None:
        with self._lock:
            envs = list(self._envs)
        for env in envs:
            try:
                env.close()
            except Exception as err:  # noqa: BLE001 - best effort while shutting down
                log.warning("closing an environment failed: %s", err)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _reap() -> None:
    try:
        from lightswe.envs.sandbox import reap_orphans

        removed = reap_orphans()
        if removed:
            log.warning("removed %d container(s) left by a killed run", len(removed))
    except Exception as err:  # noqa: BLE001 - no engine: the episodes will say so
        log.debug("reaper skipped: %s", err)


def run_rollout(tasks: Sequence, executor: Executor, *, out_dir: str | Path,
                config: RolloutConfig | None = None, keep: bool = False) -> RolloutSummary:
    """Run every planned episode not yet in ``out_dir``; return counts (and the trajectories if ``keep``)."""
    cfg = config or RolloutConfig()
    jobs = plan_jobs(tasks, cfg)
    done = finished_episode_ids(out_dir)
    todo = [job for job in jobs if job.episode_id not in done]
    summary = RolloutSummary(skipped=len(jobs) - len(todo))
    _reap()
    started = time.perf_counter()
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), initial=summary.skipped, unit="episode", dynamic_ncols=True)
    queue, in_flight = iter(todo), {}
    with TrajectoryWriter(out_dir, shard_size=cfg.shard_size, parquet=cfg.parquet) as writer:
        try:
            while True:
                while len(in_flight) < executor.concurrency and (job := next(queue, None)) is not None:
                    in_flight[executor.submit(job)] = job
                if not in_flight:
                    break
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in finished:
                    job = in_flight.pop(future)
                    try:
                        trajectory = future.result()
                    except Exception as err:  # noqa: BLE001 - a bug in one episode must not stop the rest
                        log.error("episode %s failed: %r (not written; a resume retries it)", job.episode_id, err)
                        summary.failed += 1
                        continue
                    writer.write(trajectory)
                    summary.episodes += 1
                    summary.resolved += trajectory.resolved
                    summary.statuses[trajectory.status.value] += 1
                    summary.tool_calls += trajectory.num_steps
                    if keep:
                        summary.trajectories.append(trajectory)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"resolved {summary.resolved}/{summary.episodes} "
                                            f"({summary.resolve_rate:.0%})")
        except BaseException:
            executor.shutdown()
            raise
        finally:
            if bar is not None:
                bar.close()
    summary.seconds = time.perf_counter() - started
    return summary
