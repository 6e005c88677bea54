"""``lightswe train``: rollouts with the current weights -> trajectories on disk -> CISPO updates -> repeat.

Each step: take the next ``tasks_per_step`` tasks (a seeded permutation per epoch; the cursor is checkpointed),
run ``group_size`` episodes per task in real Docker sandboxes with the built-in model (the same module the
learner trains, so weights are in sync by construction; with Ray, workers load the weights the step saved),
write the trajectories under ``out_dir/rollouts/step-N`` (a crash mid-rollout resumes the finished episodes),
compute group-relative advantages (failed runs excluded, equal-reward groups filtered), and run the learner.
Metrics go to ``metrics.jsonl`` + TensorBoard, curves to ``curves.png``; checkpoints resume exactly.
Under ``torchrun --nproc-per-node N`` the learner is sharded with FSDP2 and each rank runs whole task groups of
every step (``lightswe.agent.distributed``); rank 0 alone warm-starts and writes the run's files.

Embedded defaults train the ``tiny`` model on the arithmetic bug family (``lightswe.agent.train_tasks``) and
finish in minutes on a CPU. A random tiny model cannot write tool calls, so by default it is first warm-started
by behaviour cloning of scripted trajectories of the family's ``warm`` split, whose operator choice is random
and balanced: the warm start teaches the format, the reward teaches the answer.

Example::

    cfg = TrainConfig(out_dir="runs/t1", steps=4)
    summary = train(cfg)      # {"success_rate_first": ..., "success_rate_last": ..., ...}
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightswe.agent.advantages import AdvantageConfig, Advantages, fill_batch, group_advantages
from lightswe.agent.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from lightswe.agent.cispo import LOSSES, LossConfig, SFTLoss
from lightswe.agent.distributed import DistContext, refresh_sampler
from lightswe.agent.early_stop import EarlyStopConfig
from lightswe.agent.learner import Learner, LearnerConfig, TrainBatch, shard_model
from lightswe.agent.loop import AgentConfig
from lightswe.agent.metrics import MetricsLog, plot_curves
from lightswe.agent.trajectory import EpisodeStatus, Trajectory, read_trajectories

log = logging.getLogger(__name__)

# Short on purpose: a byte-level tiny model reads every character of it at every step.
SHORT_PROMPT = "One tool call per turn, e.g.\n{example}"


@dataclass(kw_only=True, slots=True)
class WarmStartConfig:
    enabled: bool = True
    steps: int = 150  # behaviour-cloning updates on the scripted trajectories
    batch_size: int = 4
    lr: float = 1e-2
    final_lr_ratio: float = 0.05  # linear decay of the warm-start lr to lr * final_lr_ratio


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    out_dir: str = "runs/train"
    model: str = "tiny"  # preset name (random init from ``seed``) or a checkpoint directory
    # "arith:<split>[:<op words>]" (built-in family, see lightswe.agent.train_tasks) or a JSONL of task instances
    tasks: str = "arith:rl:sum"
    eval_tasks: str = "arith:eval:sum"  # "" to skip evaluation
    steps: int = 10
    tasks_per_step: int = 4
    group_size: int = 8
    eval_group_size: int = 8
    eval_every: int = 5  # also evaluate every N steps (0: before the first and after the last step only)
    concurrency: int = 4  # episodes (sandboxes) in flight
    seed: int = 0
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    loss: str = "cispo"  # cispo | dapo | grpo
    loss_config: LossConfig = field(default_factory=LossConfig)
    # Equal-reward groups stay in the batch with advantage 0 (no gradient) so that the token-level normaliser is
    # the whole generation batch: filtered, a lone group with signal in a mostly solved step got 4x the weight per
    # token, and one such update (7 successes, one wrong operator) destroyed the tiny model's tool-call format at
    # step 7 of a default run (seed 1). Costs the forward/backward of those rows; filter_equal=True skips them.
    advantages: AdvantageConfig = field(default_factory=lambda: AdvantageConfig(filter_equal=False))
    # Linear decay of the RL learning rate to lr * final_lr_ratio at the last step (1.0: constant); derived from
    # the step number, so a resumed run continues the same schedule.
    final_lr_ratio: float = 0.1
    # DAPO dynamic sampling: while fewer than ``tasks_per_step`` groups of a step carry signal (rewards not all
    # equal), draw up to this many more rounds of new tasks from the stream (the data cursor moves on). 0: off,
    # one draw per step (the MiniMax-M1 practice).
    resample_rounds: int = 0
    # DAPO's overlong filtering: an episode with a turn cut at the token budget (or out of context) is left out of
    # its group's advantages and the loss. Its 0 says the budget ran out, not which tokens were wrong, and on the
    # tiny model one such rambling sample (160 tokens at advantage -2.6 in a 7-of-8 group) made the update that
    # destroyed the tool-call format in a default run. Still counted as a failure in the success metrics.
    overlong_filter: bool = True
    # AdamW eps: the paper's 1e-15 (LearnerConfig's default) is for large models. On the tiny model it turns the
    # small but consistent gradients of format tokens (pushed down in the few failed samples of a mostly solved
    # group, barely pushed up where they are already certain) into lr-sized steps, and the tool-call format
    # collapsed within 7-14 steps at every lr tried (5e-4 to 2e-3, also with eps 1e-4). With eps 1e-3 small
    # gradients take small steps: the same runs kept the format and learned the operator (see the README).
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(lr=3e-3, eps=1e-3, minibatches=2,
                                                                         micro_batch_size=8))
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(
        max_steps=2, max_context_tokens=1024, max_new_tokens=160, max_format_errors=1, temperature=0.5,
        system_prompt=SHORT_PROMPT, early_stop=EarlyStopConfig(enabled=False)))
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    ray: str | None = None  # Ray address ('local' for a local cluster): episodes on Ray actors
    # Sampling engine: "model" (the built-in module, in this process) or "vllm" (an in-process vllm.LLM loaded
    # from the starting weights; the learner's weights are pushed into it after every update).
    engine: str = "model"
    vllm_args: dict = field(default_factory=dict)  # vllm.LLM keyword arguments (tensor_parallel_size, ...)
    device: str = "cpu"


# ---------------------------------------------------------------------------------------------- pieces
def arith_spec(spec: str) -> tuple[str, list[str] | None]:
    """``arith:<split>[:<word>,<word>...]`` -> (split, words or None for all four operations)."""
    _, split, *rest = spec.split(":")
    if len(rest) > 1:
        raise ValueError(f"tasks {spec!r}: expected arith:<split>[:<op word>,...], e.g. arith:rl:sum")
    return split, (rest[0].split(",") if rest else None)


def load_tasks(spec: str) -> list:
    if spec.startswith("arith:"):
        from lightswe.agent.train_tasks import arithmetic_tasks

        split, words = arith_spec(spec)
        return arithmetic_tasks(split, words=words)
    from lightswe.tasks.datasets import load_tasks

    try:
        return load_tasks(spec)
    except FileNotFoundError:
        raise ValueError(f"tasks {spec!r}: expected 'arith:<split>[:<op words>]' (e.g. arith:rl:sum), a task file "
                         "(.jsonl/.json/.parquet), a dataset directory or a cached dataset name") from None


def tasks_at(tasks: list, cursor: int, count: int, seed: int) -> list:
    """``count`` tasks from position ``cursor`` of an endless stream of seeded per-epoch permutations."""
    out, n = [], len(tasks)
    for pos in range(cursor, cursor + count):
        order = list(range(n))
        random.Random(seed * 1_000_003 + pos // n).shuffle(order)
        out.append(tasks[order[pos % n]])
    return out


def batch_from(trajectories: list[Trajectory], advantages: list[float]) -> TrainBatch:
    """Rows in group order, tagged with their group: the learner never splits a group across updates."""
    order = sorted(range(len(trajectories)), key=lambda i: trajectories[i].group_id)  # stable within a group
    rows = [trajectories[i] for i in order]
    return TrainBatch.from_sequences([t.token_ids for t in rows], [t.loss_mask for t in rows],
                                     [t.logprobs for t in rows], [advantages[i] for i in order],
                                     group_ids=[t.group_id for t in rows])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Rollouts:
    """Runs episodes with the current weights (threads in this process, or Ray actors) and reads them back."""

    def __init__(self, cfg: TrainConfig, model, tokenizer) -> None:
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
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
        from lightswe.agent.policies.model import ModelPolicy
        from lightswe.agent.rollout import LocalExecutor, RolloutConfig, default_env_factory, run_rollout

        self.prepare(tasks)
        rcfg = RolloutConfig(group_size=group_size, round=round_, draw=draw, seed=seed, progress=False,
                             parquet=False)
        weights = None
        if self.cfg.ray and policy is None:
            from lightswe.agent.ray_executor import RayExecutor

            self._init_ray()
            weights = out_dir.parent / f"weights-{round_}"  # new actors load the step's weights from here
            self.model.save_pretrained(weights)
            executor = RayExecutor(policy=f"model:{weights}?version={version}", tasks=tasks,
                                   num_workers=self.cfg.concurrency, agent=self.cfg.agent)
        else:
            if policy is None and self.cfg.engine == "vllm":
                policy = self._vllm_policy(out_dir)
            policy = policy or ModelPolicy(self.model, name=f"model:{self.cfg.model}", version=version,
                                           max_batch=self.cfg.concurrency)
            executor = LocalExecutor(policy, self.tokenizer, concurrency=self.cfg.concurrency, agent=self.cfg.agent,
                                     env_factory=default_env_factory(tasks))
        try:
            run_rollout(tasks, executor, out_dir=out_dir, config=rcfg)
        finally:
            executor.shutdown()
            if weights is not None:  # the checkpoints keep the weights; this copy was only for the actors
                shutil.rmtree(weights, ignore_errors=True)
        return sorted(read_trajectories(out_dir), key=lambda t: t.episode_id)

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

    def _vllm_policy(self, out_dir: Path):
        """The vLLM engine, started once from the current weights (saved where vLLM can load them)."""
        if self._vllm is None:
            from lightswe.agent.policies.vllm_engine import VLLMPolicy

            weights = Path(self.cfg.out_dir) / "vllm-start"
            self.model.save_pretrained(weights)
            self._vllm = VLLMPolicy(str(weights), **self.cfg.vllm_args)
        return self._vllm

    def sync(self, model) -> None:
        """After an update: push the learner's weights into the vLLM engine (the built-in engine samples from the
        learner's own module, or from the sampler copy the distributed loop refreshes)."""
        if self._vllm is not None:
            from lightswe.agent.learner import sync_vllm_weights

            sync_vllm_weights(self._vllm.llm, model)

    def close(self) -> None:
        """Stop the local Ray cluster this run started (an external cluster is left running)."""
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False


def _failed(t: Trajectory) -> bool:
    return t.status is EpisodeStatus.SANDBOX_ERROR or t.reward is None


def step_lr(cfg: TrainConfig, step: int) -> float:
    """The RL learning rate of ``step`` (1-based): linear from ``lr`` to ``lr * final_lr_ratio`` at the last."""
    done = (step - 1) / max(cfg.steps - 1, 1)
    return cfg.learner.lr * (1.0 - (1.0 - cfg.final_lr_ratio) * min(done, 1.0))


def step_advantages(trajectories: list[Trajectory], cfg: TrainConfig) -> Advantages:
    """Group-relative advantages of a step's episodes. Left out (no advantage, no loss): failed runs, and with
    overlong filtering the truncated ones."""
    return group_advantages([t.group_id for t in trajectories], [t.reward for t in trajectories],
                            [_failed(t) or (cfg.overlong_filter and t.truncated) for t in trajectories],
                            cfg.advantages)


def rollout_metrics(trajectories: list[Trajectory], prefix: str = "", reduce=None) -> dict[str, float]:
    """Success, reward and counts of a rollout; ``reduce`` (e.g. ``DistContext.sum``) sums the counts over
    ranks first, so every rank gets the metrics of all ranks' episodes."""
    graded = [t for t in trajectories if not _failed(t)]
    counts = [len(graded), sum(t.resolved for t in graded), sum(t.reward for t in graded),
              sum(t.status is EpisodeStatus.SUBMITTED for t in graded), len(trajectories),
              sum(t.num_generated_tokens for t in trajectories), sum(t.truncated for t in graded)]
    graded_n, resolved, reward, submitted, episodes, tokens, truncated = reduce(counts) if reduce else counts
    n = max(graded_n, 1)
    return {f"{prefix}success_rate": resolved / n, f"{prefix}reward_mean": reward / n,
            f"{prefix}submitted": submitted / n, f"{prefix}truncated": truncated / n,
            f"{prefix}episodes": float(episodes),
            f"{prefix}runs_failed": float(episodes - graded_n), f"{prefix}generated_tokens": float(tokens)}


# ----------------------------------------------------------------------------------------- warm start
def warm_start(cfg: TrainConfig, model, tokenizer, rollouts: Rollouts) -> dict[str, float]:
    """Behaviour cloning of scripted trajectories on the family's ``warm`` split (see module docstring)."""
    from lightswe.agent.policies.scripted import ScriptedPolicy
    from lightswe.agent.train_tasks import arithmetic_tasks, warm_start_scripts

    wcfg = cfg.warm_start
    tasks = arithmetic_tasks("warm", words=arith_spec(cfg.tasks)[1])  # the operations trained on
    out = Path(cfg.out_dir) / "warm_start"
    trajs = []
    for shift in range(4):  # every statement with every operator once: the answer cannot be cloned
        policy = ScriptedPolicy(warm_start_scripts(tasks, shift), tokenizer)
        trajs += [t for t in rollouts.run(tasks, out / f"rollouts-{shift}", group_size=1, round_=0, seed=cfg.seed,
                                          policy=policy) if t.status is EpisodeStatus.SUBMITTED]
    if not trajs:
        raise RuntimeError(f"no scripted episode submitted under {out}; check the Docker sandbox (lightswe doctor)")
    learner = Learner(model, SFTLoss(), LearnerConfig(lr=wcfg.lr, minibatches=1, micro_batch_size=wcfg.batch_size,
                                                      grad_clip=1.0))
    # Linear decay to lr * final_lr_ratio: at a constant 1e-2 the last updates leave the tiny model noisy
    # (3% valid episodes at evaluation), the decay settles it on the format (measured in the issue notes).
    schedule = torch.optim.lr_scheduler.LambdaLR(
        learner.optimizer, lambda i: 1.0 - (1.0 - wcfg.final_lr_ratio) * min(i / max(wcfg.steps - 1, 1), 1.0))
    rng = random.Random(cfg.seed)
    order: list[int] = []
    losses = []
    for _ in range(wcfg.steps):
        while len(order) < wcfg.batch_size:  # shuffled epochs: every operator is cloned equally often
            order += rng.sample(range(len(trajs)), len(trajs))
        pick, order = [trajs[i] for i in order[:wcfg.batch_size]], order[wcfg.batch_size:]
        losses.append(learner.step(batch_from(pick, [1.0] * len(pick)))["loss"])
        schedule.step()
    return {"warm_start_loss_first": losses[0], "warm_start_loss_last": losses[-1],
            "warm_start_episodes": float(len(trajs)), "warm_start_scripted_success": rollout_metrics(trajs)["success_rate"]}


# ------------------------------------------------------------------------------------------- the loop
def check_engine(cfg: TrainConfig, world: int) -> None:
    """Refuse a sampling engine that cannot run with these settings, before any work starts."""
    if cfg.engine not in ("model", "vllm"):
        raise ValueError(f"engine {cfg.engine!r}: expected 'model' (built-in) or 'vllm'")
    if cfg.engine == "model":
        return
    if importlib.util.find_spec("vllm") is None:
        raise ImportError("--engine vllm needs vLLM: pip install 'lightswe[vllm]' (a CUDA machine), or use the "
                          "built-in engine (--engine model)")
    if cfg.ray or world > 1:
        raise ValueError("--engine vllm runs one in-process vllm.LLM; it does not combine with --ray or torchrun. "
                         "Spread it over GPUs with --vllm-arg tensor_parallel_size=N instead")


def check_distributed(cfg: TrainConfig, world: int) -> None:
    """Refuse settings that cannot work with ``world`` torchrun ranks, naming the fix."""
    if world <= 1:
        return
    if cfg.ray:
        raise ValueError(f"--ray under torchrun (WORLD_SIZE={world}) is not supported: each rank already runs its "
                         "share of the episodes in local sandboxes. Drop --ray, or run one process (no torchrun) "
                         "with --ray to put the episodes on Ray actors.")
    if cfg.tasks_per_step < world:
        raise ValueError(f"tasks_per_step={cfg.tasks_per_step} < {world} ranks: every rank runs whole task groups, "
                         f"so some rank would have none; use --tasks-per-step >= {world} (a multiple of {world} "
                         f"balances the ranks) or fewer ranks")


def train(cfg: TrainConfig) -> dict[str, float]:
    """Single process, or every rank of a torchrun job (see ``lightswe.agent.distributed``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.resample_rounds < 0:
        raise ValueError(f"resample_rounds must be >= 0 (0 turns dynamic sampling off), got {cfg.resample_rounds}")
    if not 0.0 <= cfg.final_lr_ratio <= 1.0:
        raise ValueError(f"final_lr_ratio must be in [0, 1] (1.0: constant lr), got {cfg.final_lr_ratio}")
    check_engine(cfg, world)
    check_distributed(cfg, world)
    ctx = DistContext.from_env(cfg.device)
    cfg.device = ctx.device
    summary = _train(cfg, ctx)
    ctx.close()
    return summary


def _train(cfg: TrainConfig, ctx: DistContext) -> dict[str, float]:
    from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM, load_tokenizer

    out = Path(cfg.out_dir)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1, default=str))
    _seed_everything(cfg.seed)
    tokenizer = load_tokenizer(None)
    if Path(cfg.model).is_dir():
        model = MiniMaxForCausalLM.from_pretrained(cfg.model, device=cfg.device)
    else:
        model = MiniMaxForCausalLM(MiniMaxConfig.preset(cfg.model)).to(cfg.device)
        model.init_weights(seed=cfg.seed)  # the same weights on every rank
    cfg.learner.temperature = cfg.agent.temperature  # train the distribution the sampler draws from
    rollouts = Rollouts(cfg, model, tokenizer)
    tasks, eval_tasks = [], []
    for turn in (True, False):  # rank 0 first: the arithmetic family builds its git repository once
        if ctx.main is turn:
            tasks, eval_tasks = load_tasks(cfg.tasks), (load_tasks(cfg.eval_tasks) if cfg.eval_tasks else [])
        ctx.barrier()
    ckpt_dir = out / "checkpoints"
    summary: dict[str, float] = {}
    resuming = ctx.broadcast_object(latest_checkpoint(ckpt_dir) is not None)

    if not resuming and cfg.warm_start.enabled and cfg.tasks.startswith("arith:"):
        ws = None
        if ctx.main:  # unsharded, on rank 0 only (its scripted episodes run once); then copied to every rank
            t0 = time.perf_counter()
            ws = warm_start(cfg, model, tokenizer, rollouts)
            ws["warm_start_seconds"] = time.perf_counter() - t0
            print(f"warm start: {ws}", flush=True)
        summary.update(ctx.broadcast_object(ws))
        ctx.broadcast_module(model)

    sampler = model  # one process: the sampler is the learner's model, in sync by construction
    if ctx.distributed:  # the learner's copy is sharded; each rank samples from a full copy refreshed per update
        sampler = MiniMaxForCausalLM(model.config).to(cfg.device).requires_grad_(False)
        sampler.load_state_dict(model.state_dict())  # (deepcopy fails on tensors the last forward left behind)
        shard_model(model)
        rollouts.model = sampler
    learner = Learner(model, LOSSES[cfg.loss](cfg.loss_config), cfg.learner)
    metrics_log = MetricsLog(out) if ctx.main else None

    def rank_dir(path: Path) -> Path:  # each rank writes (and reads back) only its own episodes
        return path / f"rank-{ctx.rank}" if ctx.distributed else path

    start, cursor = 0, 0
    if resuming:
        state = load_checkpoint(ckpt_dir, model=model, optimizer=learner.optimizer)
        start, cursor, learner.updates = state["step"], state["cursor"], state["updates"]
        summary.update(state.get("summary", {}))
        if ctx.distributed:
            refresh_sampler(sampler, model)
        if ctx.main:
            for stale in (out / "rollouts").glob("step-*"):  # made by weights after the checkpoint: redo them
                if int(stale.name.split("-")[1]) > start + 1:
                    shutil.rmtree(stale)
            print(f"resumed from step {start} (cursor {cursor})", flush=True)
        ctx.barrier()
    if ctx.distributed:  # images built once, by rank 0, before ranks race for them
        if ctx.main:
            most = max(cfg.steps - start, 0) * cfg.tasks_per_step * (1 + cfg.resample_rounds)  # every draw
            upcoming = tasks_at(tasks, cursor, most, cfg.seed)
            rollouts.prepare(list({t.instance_id: t for t in upcoming + eval_tasks}.values()))
        ctx.barrier()

    def evaluate(step: int) -> None:
        if not eval_tasks:
            return
        mine, first = ctx.share(eval_tasks)
        trajs = rollouts.run(mine, rank_dir(out / "eval" / f"step-{step:04d}"), group_size=cfg.eval_group_size,
                             round_=step, seed=10_000 + cfg.seed + 1_000 * first, version=step) if mine else []
        m = rollout_metrics(trajs, prefix="eval_", reduce=ctx.sum)
        summary.setdefault("eval_success_rate_first", m["eval_success_rate"])
        summary["eval_success_rate_last"] = m["eval_success_rate"]
        if ctx.main:
            metrics_log.write(step=step, metrics=m)
            print(f"eval step {step}: success {m['eval_success_rate']:.3f} on {int(m['eval_episodes'])} episodes",
                  flush=True)

    def has_signal(group: list[Trajectory]) -> bool:
        return step_advantages(group, cfg).groups_filtered == 0

    if start == 0:
        evaluate(0)

    def draw_groups(step: int, draws: list[list[Trajectory]], count: int) -> list[list[Trajectory]]:
        """``count`` more tasks from the stream, G episodes each, as the step's next draw; this rank's groups."""
        nonlocal cursor
        k = len(draws)
        mine, first = ctx.share(tasks_at(tasks, cursor, count, cfg.seed))
        cursor += count
        step_dir = out / "rollouts" / f"step-{step:04d}"
        # job seeds as in one process: plan_jobs adds 1000 x the task's index in the list it is given
        trajs = rollouts.run(mine, rank_dir(step_dir / f"draw-{k}" if k else step_dir), group_size=cfg.group_size,
                             round_=step, draw=k, seed=cfg.seed * 7919 + step + 1_000 * first + 100_003 * k,
                             version=step - 1) if mine else []
        draws.append(trajs)
        by_group: dict[str, list[Trajectory]] = {}
        for t in trajs:
            by_group.setdefault(t.group_id, []).append(t)
        return list(by_group.values())

    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        draws: list[list[Trajectory]] = []  # this rank's episodes of each draw of the step
        # one draw, or (dynamic sampling) more until enough groups carry signal; every draw's groups go to the
        # advantages, which filter the equal-reward ones as usual
        fill_batch(functools.partial(draw_groups, step, draws), has_signal, cfg.tasks_per_step,
                   max_rounds=1 + cfg.resample_rounds, total=lambda n: int(ctx.sum([n])[0]))
        trajs = [t for trajs_k in draws for t in trajs_k]
        t_roll = time.perf_counter() - t0
        adv = step_advantages(trajs, cfg)
        kept = [i for i, k in enumerate(adv.keep) if k]
        m = rollout_metrics(trajs, reduce=ctx.sum)
        groups, filtered = ctx.sum([adv.groups, adv.groups_filtered])
        (t_roll,) = ctx.max([t_roll])
        m.update(filtered_share=filtered / groups if groups else 0.0, rollout_seconds=t_roll,
                 draws=float(len(draws)))
        # No group with signal, no optimiser step: the policy gradient is zero, and an AdamW step would only replay
        # stale momentum (with kept equal-reward groups, such steps drifted a solved tiny model into collapse).
        # Decided alike on every rank; a rank with no kept rows still joins the update.
        if groups > filtered:
            t1 = time.perf_counter()
            m["lr"] = step_lr(cfg, step)
            for group in learner.optimizer.param_groups:
                group["lr"] = m["lr"]
            m.update(learner.step(batch_from([trajs[i] for i in kept], [adv.values[i] for i in kept])))
            if ctx.distributed:
                refresh_sampler(sampler, model)
            rollouts.sync(model)
            m["update_seconds"] = time.perf_counter() - t1
        summary.setdefault("success_rate_first", m["success_rate"])
        summary["success_rate_last"] = m["success_rate"]
        if ctx.main:
            metrics_log.write(step=step, metrics=m)
            update = (f"loss {m['loss']:.4f} clip {m.get('clip_fraction', 0.0):.3f}" if groups > filtered
                      else "no update (every group had equal rewards)")
            print(f"step {step}/{cfg.steps}: success {m['success_rate']:.3f} reward {m['reward_mean']:.3f} "
                  f"filtered {m['filtered_share']:.2f} {update} ({t_roll:.0f}s rollout)", flush=True)
        if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
            evaluate(step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(ckpt_dir, step=step, model=model, optimizer=learner.optimizer, keep=cfg.keep_checkpoints,
                            state={"cursor": cursor, "updates": learner.updates, "summary": summary})
    if start < cfg.steps:
        evaluate(cfg.steps)
        save_checkpoint(ckpt_dir, step=cfg.steps, model=model, optimizer=learner.optimizer, keep=cfg.keep_checkpoints,
                        state={"cursor": cursor, "updates": learner.updates, "summary": summary})
    rollouts.close()
    if ctx.main:
        metrics_log.close()
        sampler.save_pretrained(out / "final")  # full weights (under FSDP: the refreshed sampler copy)
        keys = ("success_rate", "eval_success_rate", "reward_mean", "loss", "clip_fraction", "entropy", "grad_norm",
                "filtered_share", "logprob_mismatch_abs")
        plot_curves(out / "metrics.jsonl", out / "curves.png", keys=keys,
                    title=f"lightswe train ({cfg.loss}, {cfg.model})")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    ctx.barrier()
    return summary


# ---------------------------------------------------------------------------------------------- CLI
def register_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="RL: rollouts with the built-in model, CISPO updates, repeat "
                                            "(embedded defaults: minutes on a CPU)",
                              epilog="Several GPUs: torchrun --nproc-per-node N -m lightswe train --device cuda ... "
                                     "(FSDP2 learner; each rank runs its share of the tasks; --concurrency is per "
                                     "rank).")
    d = TrainConfig()
    p.add_argument("--out", default=d.out_dir, help="run directory (resumes from its checkpoints)")
    p.add_argument("--model", default=d.model, help="preset (tiny, small) or checkpoint directory")
    p.add_argument("--tasks", default=d.tasks, help="'arith:rl' (built-in family) or a JSONL of task instances")
    p.add_argument("--eval-tasks", default=d.eval_tasks, help="held-out tasks ('' skips evaluation)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--tasks-per-step", type=int, default=d.tasks_per_step)
    p.add_argument("--group-size", type=int, default=d.group_size, help="G samples per task")
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--resample-rounds", type=int, default=d.resample_rounds,
                   help="DAPO dynamic sampling: up to N more draws of tasks while fewer than --tasks-per-step groups "
                        "have unequal rewards (0: only filter them)")
    p.add_argument("--loss", default=d.loss, choices=sorted(LOSSES))
    p.add_argument("--eps-high", type=float, default=d.loss_config.eps_high,
                   help="upper clip of the IS weight (default: the loss's own, cispo 2.0, dapo 0.28, grpo 0.2)")
    p.add_argument("--lr", type=float, default=d.learner.lr)
    p.add_argument("--final-lr-ratio", type=float, default=d.final_lr_ratio,
                   help="linear decay of the RL lr to lr * this at the last step (1: constant)")
    p.add_argument("--adam-eps", type=float, default=d.learner.eps,
                   help="AdamW eps (the paper's 1e-15 suits large models; see TrainConfig for the tiny model's)")
    p.add_argument("--no-overlong-filter", dest="overlong_filter", action="store_false",
                   help="keep episodes cut at the token budget in the advantages (default: left out, as in DAPO)")
    p.add_argument("--grad-clip", type=float, default=d.learner.grad_clip, help="max global gradient norm (0: off)")
    p.add_argument("--behaviour", default=d.learner.behaviour, choices=["sampler", "recompute"])
    p.add_argument("--warm-start-steps", type=int, default=d.warm_start.steps, help="0 disables the warm start")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--ray", nargs="?", const="local", default=None, help="episodes on Ray actors")
    p.add_argument("--engine", default=d.engine, choices=["model", "vllm"],
                   help="sampling engine: the built-in model, or in-process vLLM with weights pushed every update")
    p.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="vllm.LLM keyword argument (repeatable; VALUE parsed as JSON when it can be)")
    p.add_argument("--device", default=d.device)
    p.set_defaults(func=_main)


def parse_kwargs(items: list[str]) -> dict:
    """``["tensor_parallel_size=2", "enforce_eager=true"]`` -> ``{"tensor_parallel_size": 2, "enforce_eager": True}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--vllm-arg {item!r}: expected KEY=VALUE, e.g. gpu_memory_utilization=0.5")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _main(args: argparse.Namespace) -> int:
    cfg = TrainConfig(out_dir=args.out, model=args.model, tasks=args.tasks, eval_tasks=args.eval_tasks,
                      steps=args.steps, tasks_per_step=args.tasks_per_step, group_size=args.group_size,
                      concurrency=args.concurrency, resample_rounds=args.resample_rounds,
                      overlong_filter=args.overlong_filter, loss=args.loss,
                      seed=args.seed, ray=args.ray, device=args.device, engine=args.engine,
                      vllm_args=parse_kwargs(args.vllm_arg))
    cfg.loss_config.eps_high = args.eps_high
    cfg.learner.lr, cfg.learner.eps, cfg.learner.behaviour = args.lr, args.adam_eps, args.behaviour
    cfg.learner.grad_clip, cfg.final_lr_ratio = args.grad_clip, args.final_lr_ratio
    cfg.warm_start.steps = args.warm_start_steps
    cfg.warm_start.enabled = args.warm_start_steps > 0
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns the same summary
        print(json.dumps(summary, indent=1))
        print(f"curves: {Path(cfg.out_dir) / 'curves.png'}")
    return 0
