"""The rollout runner's executor on Ray: each actor is one sandbox worker with its own policy client.

Actors run where a Docker engine is (give nodes a custom resource, e.g. ``ray start --resources
'{"docker": 8}'`` and pass ``actor_options={"resources": {"docker": 1}}``); the driver keeps the writer, so
storage, resume and the progress bar are the same as on one machine. Policies are built in each actor from
their spec: use ``openai:`` (a vLLM server) for a shared model, or ``model:`` for one per actor.

Needs the ``ray`` extra (``pip install 'lightswe[ray]'``).

Example::

    with RayExecutor(policy="scripted", tasks=tasks, num_workers=2) as executor:
        summary = run_rollout(tasks, executor, out_dir="runs/r1")
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from lightswe.agent.loop import AgentConfig
from lightswe.agent.rollout import EpisodeJob, _sigint_deferred, _Stoppable, default_env_factory, run_job
from lightswe.errors import InfrastructureError

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError("the Ray executor needs ray: pip install 'lightswe[ray]'") from err
    return ray


class EpisodeWorker:
    """A Ray actor (one episode at a time, plus a second thread for ``close``): builds its policy and tokenizer
    once, then runs jobs. ``close`` stops the running episode within seconds (its sandbox is closed; a
    command blocked on it returns) and removes the container."""

    def __init__(self, policy: str, tokenizer: str | None, tasks: Sequence, agent: AgentConfig,
                 env_kwargs: dict) -> None:
        import threading

        from lightswe.agent.policies.spec import make_policy
        from lightswe.model import load_tokenizer

        self.stop = threading.Event()
        self.tokenizer = load_tokenizer(tokenizer)
        self.policy = make_policy(policy, tokenizer=self.tokenizer, tasks=tasks)
        self.env = _Stoppable(default_env_factory(tasks, **env_kwargs)(), self.stop)
        self.agent = agent

    def preflight(self) -> None:
        """This actor's policy checked before any episode (``lightswe.agent.policies.spec.preflight``)."""
        from lightswe.agent.policies.spec import preflight

        preflight(self.policy, self.tokenizer)

    def run(self, job: EpisodeJob):
        from lightswe.envs.sandbox import stop_scope

        with stop_scope(self.stop):
            return run_job(job, self.policy, self.tokenizer, self.env, self.agent)

    def close(self) -> None:
        from lightswe.envs.sandbox import close_sandboxes

        self.stop.set()
        self.env.close()
        close_sandboxes()

    def where(self) -> tuple[str, int]:
        """(host name, process id) of this worker."""
        import os
        import socket

        return socket.gethostname(), os.getpid()


class RayExecutor:
    """Episodes on ``num_workers`` Ray actors. ``shutdown`` (also on Ctrl-C inside ``run_rollout``) asks every
    actor to close (in-flight episodes end at once, containers removed), waits at most ``shutdown_timeout_s``,
    then kills the actors.

    An actor that dies mid-episode (its process killed, its node lost: Ray's ``RayActorError``) is replaced by a
    new one and its episode runs again from the start there, up to ``max_restarts`` times per episode; the dead
    actor's containers on this host are reaped. Nothing of the lost run was written (the driver writes only
    finished episodes), so the episode is written once."""

    def __init__(self, *, policy: str, tasks: Sequence, num_workers: int = 2, tokenizer: str | None = None,
                 agent: AgentConfig | None = None, env_kwargs: dict | None = None, actor_options: dict | None = None,
                 address: str | None = None, shutdown_timeout_s: float = 10.0, max_restarts: int = 2) -> None:
        ray = _ray()
        if not ray.is_initialized():
            from lightswe.agent.sampling import check_ray_address

            check_ray_address(address)
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        # episodes mostly wait on Docker and the model; a second actor thread serves close() during run()
        options = {"num_cpus": 0.5, "max_concurrency": 2, **(actor_options or {})}
        worker = ray.remote(**options)(EpisodeWorker)
        self.concurrency = num_workers
        self.shutdown_timeout_s, self.max_restarts = shutdown_timeout_s, max_restarts
        args = (policy, tokenizer, list(tasks), agent or AgentConfig(), env_kwargs or {})
        self._new_actor = lambda: worker.remote(*args)
        self.actors = [self._new_actor() for _ in range(num_workers)]
        self.restarted = 0  # actors replaced after they died
        self._closing = False
        self._lock = threading.Lock()
        self._idle: queue.Queue = queue.Queue()
        for actor in self.actors:
            self._idle.put(actor)
        try:  # the policy checks a rollout in threads runs, on an actor: before any episode, in one line
            ray.get(self.actors[0].preflight.remote())
        except ray.exceptions.RayTaskError as err:  # the check's own error (UserInputError, ServerError), as is
            self.shutdown()
            raise err.cause from None
        except BaseException:
            self.shutdown()
            raise

    def submit(self, job: EpisodeJob) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        self._start(job, future, self.max_restarts)
        return future

    def _start(self, job: EpisodeJob, future: Future, restarts_left: int) -> None:
        actor = self._idle.get()  # the runner keeps at most ``concurrency`` jobs in flight
        try:
            run = actor.run.remote(job).future()
        except BaseException as err:  # noqa: BLE001 - handed to the runner through the future
            self._idle.put(actor)
            future.set_exception(err)
            return
        run.add_done_callback(lambda done: self._finished(done, actor, job, future, restarts_left))

    def _finished(self, done: Future, actor, job: EpisodeJob, future: Future, restarts_left: int) -> None:
        err = done.exception()
        if err is None:
            self._idle.put(actor)
            future.set_result(done.result())
            return
        if not isinstance(err, _ray().exceptions.RayActorError):  # the episode's own error: the actor lives
            self._idle.put(actor)
            future.set_exception(err)
            return
        with self._lock:
            closing = self._closing
        if closing or restarts_left < 1:
            future.set_exception(err)
            return
        # off Ray's callback thread: start a new actor, reap the dead one's containers, rerun the episode there
        threading.Thread(target=self._replace_and_rerun, args=(actor, job, future, restarts_left),
                         name="ray-actor-restart", daemon=True).start()

    def _replace_and_rerun(self, dead, job: EpisodeJob, future: Future, restarts_left: int) -> None:
        try:
            log.warning("episode %s: its Ray actor died (%s); rerunning it on a new actor", job.episode_id,
                        "restart %d of %d" % (self.max_restarts - restarts_left + 1, self.max_restarts))
            with self._lock:
                if self._closing:
                    raise InfrastructureError(f"episode {job.episode_id}: the Ray executor shut down while its dead "
                                              "actor was replaced; fix: run the same command again (it resumes)")
                fresh = self._new_actor()
                self.actors = [fresh if a is dead else a for a in self.actors]
                self.restarted += 1
            _ray().kill(dead)
            _reap_after_kill(wait_s=1.0)
            self._idle.put(fresh)
            self._start(job, future, restarts_left - 1)
        except BaseException as err:  # noqa: BLE001 - handed to the runner through the future
            if not future.done():
                future.set_exception(err)

    def shutdown(self) -> None:
        """Close every actor's environment (ending its episode, removing its container), then end the actors."""
        with self._lock:
            self._closing = True
        if not self.actors:
            return
        ray = _ray()
        with _sigint_deferred():
            try:
                closes = [actor.close.remote() for actor in self.actors]
                _, pending = ray.wait(closes, num_returns=len(closes), timeout=self.shutdown_timeout_s)
            finally:
                for actor in self.actors:
                    ray.kill(actor)
                self.actors = []
            if pending:  # an actor did not answer in time: its containers on this host go with it
                _reap_after_kill()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _reap_after_kill(wait_s: float = 3.0) -> None:
    """Remove this host's lightswe containers whose owner process is gone (killed actors), for up to
    ``wait_s`` while the killed processes exit; other hosts' leftovers go with their next run's reaper."""
    import time

    from lightswe.envs.sandbox import reap_orphans

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            reap_orphans()
        except Exception:  # noqa: BLE001 - best effort while shutting down
            return
        time.sleep(0.5)
