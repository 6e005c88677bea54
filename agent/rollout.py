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

import contextlib
import inspect
import logging
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lightswe.agent.chat import Tokenizer
from lightswe.agent.loop import AgentConfig, run_episode
from lightswe.agent.policies.base import Policy
from lightswe.agent.trajectory import Trajectory, TrajectoryWriter, finished_episode_ids
from lightswe.errors import UserInputError

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
            raise UserInputError(f"group_size must be >= 1, got {self.group_size}")


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
    ungraded: int = 0  # written, but never graded (sandbox_error, or a broken task's None reward)
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    tool_calls: int = 0
    trajectories: list[Trajectory] = field(default_factory=list)

    @property
    def resolve_rate(self) -> float:
        """Resolved over graded episodes of this run (``Trajectory.graded``: a sandbox_error is never a 0)."""
        graded = self.episodes - self.ungraded
        return self.resolved / graded if graded else 0.0


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
    step budget). One env per worker: each episode gets an untouched container from the env's warm pool
    (nothing of the previous episode survives).

    Raises :class:`~lightswe.envs.engine.EngineError` at once when no Docker engine answers."""

    if "client" not in env_kwargs:  # fail here, in one line, when no engine answers (not once per episode)
        from lightswe.envs.sandbox import default_client

        default_client()

    def make():
        import gymnasium
        import lightswe.envs.registration  # noqa: F401 - registers the ids

        return gymnasium.make("lightswe/SWE-v0", tasks=list(tasks), **env_kwargs).unwrapped

    return make


def run_job(job: EpisodeJob, policy: Policy, tokenizer: Tokenizer, env, agent: AgentConfig) -> Trajectory:
    """One episode in ``env`` (reset to the job's task)."""
    return run_episode(env, policy, tokenizer, task_id=job.task.instance_id, config=agent, group_id=job.group_id,
                       sample_index=job.sample_index, seed=job.seed)


class _Stoppable:
    """An env seen through the executor's stop event: once it is set, ``reset``/``step`` raise
    ``SandboxError`` (the loop ends the episode as a sandbox error, which nobody writes) and a sandbox the env
    restarted meanwhile is closed. Attributes (``tool_format``...) are the env's."""

    def __init__(self, env, stop: threading.Event) -> None:
        self.env, self._stop = env, stop

    def __getattr__(self, name: str):
        return getattr(self.env, name)

    def _check(self) -> None:
        if self._stop.is_set():
            from lightswe.envs.sandbox import SandboxError

            self.env.close()
            raise SandboxError("the rollout was stopped (interrupted or shut down)")

    def reset(self, **kwargs):
        self._check()
        out = self.env.reset(**kwargs)
        self._check()
        return out

    def step(self, action):
        self._check()
        out = self.env.step(action)
        self._check()
        return out

    def close(self) -> None:
        self.env.close()


class LocalExecutor:
    """Episodes on daemon threads of this process, one environment (one sandbox) per thread: ``concurrency``
    bounds the sandboxes alive at once.

    ``shutdown`` (also on leaving ``with``, and on Ctrl-C inside :func:`run_rollout`) stops within seconds: it
    sets a stop event that the threads' envs and sandboxes check, cancels queued episodes, closes every sandbox
    the threads made (removing the containers; a command blocked on a sandbox socket, e.g. a 15-minute test
    run at submit, returns at once), and waits at most ``shutdown_timeout_s`` for the threads. A thread still
    inside ``policy.generate`` then is left to end by itself (daemon: it never keeps the process alive, and
    its next env call raises). In-flight episodes end unwritten; a resume reruns them."""

    def __init__(self, policy: Policy, tokenizer: Tokenizer, *, env_factory: Callable, concurrency: int = 4,
                 agent: AgentConfig | None = None, shutdown_timeout_s: float = 2.0) -> None:
        required = [p for p in inspect.signature(env_factory).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if required:
            raise TypeError(f"env_factory must take no arguments and return an env over all the rollout's tasks "
                            f"(episodes reset it with options={{'task_id': ...}}); got one taking {required[0].name!r}. "
                            "Use default_env_factory(tasks).")
        if concurrency < 1:
            raise UserInputError(f"concurrency must be >= 1 (episodes in flight), got {concurrency}")
        self.policy, self.tokenizer, self.concurrency = policy, tokenizer, concurrency
        self.env_factory, self.agent = env_factory, agent or AgentConfig()
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stop = threading.Event()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._envs: list = []
        self._lock = threading.Lock()

    def submit(self, job: EpisodeJob) -> Future:
        if self.stop.is_set():
            raise RuntimeError("this executor was shut down; make a new one")
        future: Future = Future()
        self._jobs.put((future, job))
        with self._lock:
            if len(self._threads) < self.concurrency:
                thread = threading.Thread(target=self._work, name=f"episode-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return future

    def _work(self) -> None:
        from lightswe.envs.sandbox import stop_scope

        env = None
        with stop_scope(self.stop):
            while not self.stop.is_set():
                item = self._jobs.get()
                if item is None:
                    return
                future, job = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    if env is None:
                        env = _Stoppable(self.env_factory(), self.stop)
                        with self._lock:
                            self._envs.append(env)
                        if self.stop.is_set():
                            env.close()
                    future.set_result(run_job(job, self.policy, self.tokenizer, env, self.agent))
                except BaseException as err:  # noqa: BLE001 - handed to the runner through the future
                    future.set_exception(err)

    def shutdown(self) -> None:
        """Stop: cancel queued episodes, close every sandbox of this executor, wait up to
        ``shutdown_timeout_s`` for the threads (idempotent)."""
        from lightswe.envs.sandbox import close_sandboxes

        if self.stop.is_set():  # shut down already (run_rollout on Ctrl-C, then the caller's `with`/finally)
            close_sandboxes(self.stop)
            return
        with _sigint_deferred():
            self.stop.set()
            while True:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
            with self._lock:
                threads, envs = list(self._threads), list(self._envs)
            for _ in threads:
                self._jobs.put(None)
            close_sandboxes(self.stop)  # first: wakes every command blocked on a container
            closers = [threading.Thread(target=_close_quietly, args=(env,), daemon=True) for env in envs]
            for closer in closers:  # in parallel: each env also removes its pool's pre-started containers
                closer.start()
            deadline = time.monotonic() + self.shutdown_timeout_s
            for closer in closers:
                closer.join(max(0.0, deadline - time.monotonic()))
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            close_sandboxes(self.stop)  # again: one a thread was creating while we closed the others
            busy = [t.name for t in threads if t.is_alive()]
            if busy:
                log.warning("%d episode thread(s) still busy (generating) after %.0f s; they end by themselves",
                            len(busy), self.shutdown_timeout_s)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _close_quietly(env) -> None:
    try:
        env.close()
    except Exception as err:  # noqa: BLE001 - best effort while shutting down
        log.warning("closing an environment failed: %s", err)


@contextlib.contextmanager
def _sigint_deferred():
    """Within the block a second Ctrl-C does not interrupt the (bounded) clean-up; it is raised after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(1))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


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
    """Run every planned episode not yet in ``out_dir``; return counts (and the trajectories if ``keep``, in job
    order). Episodes run and finish in any order; what is stored and returned does not depend on it."""
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
    with TrajectoryWriter(out_dir, shard_size=cfg.shard_size, parquet=cfg.parquet,
                          order=[job.episode_id for job in jobs]) as writer:
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
                    summary.ungraded += not trajectory.graded
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
    rank = {job.episode_id: i for i, job in enumerate(jobs)}  # job order, not the order episodes finished in
    summary.trajectories.sort(key=lambda t: rank[t.episode_id])
    return summary
