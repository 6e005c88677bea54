"""The sampling engines of a training run: who runs the episodes, with which weights, and how they stay in sync.

Three engines, chosen in one place (:meth:`Rollouts.executor`):

- ``model`` (default): threads in this process sample from the learner's own module (or, under torchrun, from
  the sampler copy the loop refreshes after every update): in sync by construction.
- ``--ray ADDRESS``: Ray actors; each step saves the weights and new actors load them.
- ``vllm``: an in-process ``vllm.LLM`` started from the starting weights (saved with the model's
  ``save_pretrained``: the transformers layout for ``hf:`` models); the learner's weights are pushed into it after
  every update (:meth:`Rollouts.sync`). Pass ``--sampler.vllm-args dtype=float32`` to sample in the learner's precision.

Example::

    rollouts = Rollouts(SamplerConfig(concurrency=4), agent=AgentConfig(), model=model, tokenizer=tok,
                        name="model:tiny", work_dir=Path("runs/t1"))
    trajs = rollouts.run(tasks, Path("runs/t1/rollouts/step-0001"), group_size=8, round_=1, seed=0)
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lightswe.agent.loop import AgentConfig
from lightswe.agent.trajectory import Trajectory, read_trajectories
from lightswe.errors import UserInputError

ENGINES = ("model", "vllm")


@dataclass(kw_only=True, slots=True)
class SamplerConfig:
    """Who runs the episodes of a run."""

    # Sampling engine: 'model' (the built-in module, in this process) or 'vllm' (an in-process vllm.LLM loaded
    # from the starting weights; the learner's weights are pushed into it after every update).
    engine: str = "model"
    # Run episodes on Ray actors: a cluster address, or 'local' to start a local cluster.
    ray: str | None = None
    # Episodes (sandboxes) in flight (per rank under torchrun).
    concurrency: int = 4
    # vllm.LLM keyword arguments as KEY=VALUE (VALUE parsed as JSON when it can be), e.g.
    # tensor_parallel_size=2.
    vllm_args: tuple[str, ...] = ()
    # Built-in engine off CUDA: sample each request alone, so that a seeded episode gets the same tokens and
    # bit-identical log-probs whichever episodes were in flight beside it (a run reproduces from its seed).
    # --sampler.no-batch-invariant batches concurrent episodes (faster sampling; same tokens, last bits vary).
    batch_invariant: bool = True

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise UserInputError(f"--engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.concurrency < 1:
            raise UserInputError(f"--concurrency {self.concurrency}: must be >= 1 (episodes in flight); fix: "
                                 f"--concurrency 4")
        if self.ray == "":
            raise UserInputError("--ray '': expected a Ray address, or 'local' for a local cluster")
        parse_kwargs(self.vllm_args)

    def check(self, world: int) -> None:
        """Refuse an engine that cannot run here with these settings (``world`` torchrun ranks), before any work.

        Raises:
            UserInputError: vLLM with Ray or torchrun; ImportError: vLLM not installed; InfrastructureError:
            nothing answers at the ``--ray`` address.
        """
        check_ray_address(self.ray)
        if self.engine == "model":
            return
        if importlib.util.find_spec("vllm") is None:
            raise ImportError("--engine vllm needs vLLM: pip install 'lightswe[vllm]' (a CUDA machine), run under "
                              "the CPU test venv (.venv-vllm/bin/python -m lightswe train ..., made by bash "
                              ".ci/setup), or use the built-in engine (--engine model)")
        if self.ray or world > 1:
            raise UserInputError("--engine vllm runs one in-process vllm.LLM; it does not combine with --ray or "
                                 "torchrun. Spread it over GPUs with --vllm-arg tensor_parallel_size=N instead")


def check_ray_address(address: str | None, *, timeout_s: float = 5.0) -> None:
    """Fail at once when nothing listens at a Ray cluster address (``HOST:PORT`` or ``ray://HOST:PORT``):
    ``ray.init`` would otherwise retry for minutes, printing warnings. ``None``, ``local`` and ``auto`` are not
    probed (Ray starts or finds the cluster itself).

    Raises:
        InfrastructureError: naming the address, what happened and the fix.
    """
    import re
    import socket

    from lightswe.errors import InfrastructureError

    match = re.fullmatch(r"(?:ray://)?\[?([\w.:-]+?)\]?:(\d+)", address or "")
    if not match:
        return
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as err:
        raise InfrastructureError(f"--ray {address}: no Ray cluster answers there ({err.strerror or err}); fix: "
                                  "start one (ray start --head) and pass its address (HEAD:6379), or --ray local "
                                  "for a cluster on this machine") from None


def parse_kwargs(items) -> dict:
    """``["tensor_parallel_size=2", "enforce_eager=true"]`` -> ``{"tensor_parallel_size": 2, "enforce_eager": True}``.

    Raises:
        UserInputError: an item without ``=``.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"--vllm-arg {item!r}: expected KEY=VALUE, e.g. gpu_memory_utilization=0.5")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class Rollouts:
    """Runs episodes with the current weights (threads in this process, Ray actors, or vLLM) and reads them back.

    ``model`` is the module the episodes sample from (the loop swaps in the sampler copy under torchrun);
    ``name`` is the policy name written into trajectories; ``work_dir`` holds the vLLM engine's start weights;
    ``autocast_dtype`` is the learner's mixed precision (``LearnerConfig.autocast_dtype``), which the CUDA sampler
    engine reproduces so that sampled log-probs match the learner's (``SamplerEngine``).
    """

    def __init__(self, cfg: SamplerConfig, *, agent: AgentConfig, model, tokenizer, name: str,
                 work_dir: Path, env_kwargs: dict | None = None, autocast_dtype: str | None = None) -> None:
        self.cfg, self.agent, self.model, self.tokenizer = cfg, agent, model, tokenizer
        self.autocast_dtype = autocast_dtype
        self.env_kwargs = dict(env_kwargs or {})  # SWEEnv keyword arguments (e.g. hack_policy)
        self.name, self.work_dir = name, Path(work_dir)
        self._images: set[str] = set()
        self._ray_started = False
        self._vllm = None  # VLLMPolicy, made on first use

    def prepare(self, tasks: list) -> None:
        """Build (or find) each task's image once, one at a time, before episodes race for it."""
        from lightswe.tasks.images import ensure_instance_image

        for task in tasks:
            if task.instance_id not in self._images:
                ensure_instance_image(task)
                self._images.add(task.instance_id)

    def run(self, tasks: list, out_dir: Path, *, group_size: int, round_: int, seed: int, policy=None,
            version: int = 0, draw: int = 0) -> list[Trajectory]:
        """``group_size`` episodes of each task, written under ``out_dir`` (finished ones are kept on a rerun);
        ``policy`` overrides the engine (the warm start's scripted policy). Returns them sorted by episode id."""
        from lightswe.agent.rollout import RolloutConfig, run_rollout

        self.prepare(tasks)
        rcfg = RolloutConfig(group_size=group_size, round=round_, draw=draw, seed=seed, progress=False,
                             parquet=False)
        executor, weights = self.executor(tasks, out_dir, policy=policy, round_=round_, version=version)
        try:
            run_rollout(tasks, executor, out_dir=out_dir, config=rcfg)
        finally:
            executor.shutdown()
            if weights is not None:  # the checkpoints keep the weights; this copy was only for the actors
                shutil.rmtree(weights, ignore_errors=True)
        return sorted(read_trajectories(out_dir), key=lambda t: t.episode_id)

    def executor(self, tasks: list, out_dir: Path, *, policy, round_: int, version: int):
        """The engine choice: ``(executor, weights folder to remove afterwards or None)``."""
        from lightswe.agent.policies.model import ModelPolicy
        from lightswe.agent.rollout import LocalExecutor, default_env_factory

        if self.cfg.ray and policy is None:
            from lightswe.agent.ray_executor import RayExecutor

            self._init_ray()
            weights = out_dir.parent / f"weights-{round_}"  # new actors load the step's weights from here
            self.model.save_pretrained(weights)
            kind = getattr(self.model, "spec_kind", "model")  # "hf" for a transformers model (its own tokenizer)
            return RayExecutor(policy=f"{kind}:{weights}?version={version}", tasks=tasks,
                               tokenizer=str(weights) if kind == "hf" else None,
                               num_workers=self.cfg.concurrency, agent=self.agent,
                               env_kwargs=self.env_kwargs), weights
        if policy is None and self.cfg.engine == "vllm":
            policy = self._vllm_policy()
        policy = policy or ModelPolicy(self.model, name=self.name, version=version, max_batch=self.cfg.concurrency,
                                       autocast_dtype=self.autocast_dtype or "auto",
                                       batch_invariant=self.cfg.batch_invariant)
        return LocalExecutor(policy, self.tokenizer, concurrency=self.cfg.concurrency, agent=self.agent,
                             env_factory=default_env_factory(tasks, **self.env_kwargs)), None

    def _init_ray(self) -> None:
        """'local' starts a fresh cluster in this process (never joins one started by someone else), sized so that
        every actor (0.5 CPU each, see RayExecutor) gets a slot; anything else is the address of a cluster."""
        import ray

        if ray.is_initialized():
            return
        if self.cfg.ray == "local":
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(self.cfg.concurrency / 2)),
                     include_dashboard=False, log_to_driver=False)
            self._ray_started = True
        else:
            ray.init(address=self.cfg.ray, log_to_driver=False)

    def _vllm_policy(self):
        """The vLLM engine, started once from the current weights (saved where vLLM can load them)."""
        if self._vllm is None:
            from lightswe.agent.policies.vllm_engine import VLLMPolicy

            weights = self.work_dir / "vllm-start"
            self.model.save_pretrained(weights)
            self._vllm = VLLMPolicy(str(weights), **parse_kwargs(self.cfg.vllm_args))
        return self._vllm

    def sync(self, model) -> None:
        """After an update: push the learner's weights into the vLLM engine (``VLLMPolicy.push_weights``: vLLM's
        in-place reload); the built-in engine samples from the learner's own module, or from the sampler copy the
        distributed loop refreshes."""
        if self._vllm is not None:
            self._vllm.push_weights(model)

    def close(self) -> None:
        """Stop the local Ray cluster this run started (an external cluster is left running)."""
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False
