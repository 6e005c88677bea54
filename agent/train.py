"""``lightswe train``: rollouts with the current weights -> trajectories on disk -> CISPO updates -> repeat.

Each step: take the next ``tasks_per_step`` tasks from the stream (a seeded permutation per epoch; the cursor is
checkpointed), run ``group_size`` episodes per task in real Docker sandboxes (``lightswe.agent.sampling``), write
them under ``out_dir/rollouts/step-N`` (a crash mid-rollout resumes the finished episodes), compute group-relative
advantages (failed runs excluded; ``lightswe.agent.train_step``) and run the learner. Metrics go to
``metrics.jsonl`` + TensorBoard, curves to ``curves.png``; checkpoints resume exactly. Under ``torchrun
--nproc-per-node N`` the learner is sharded with FSDP2 and each rank runs whole task groups of every step
(``lightswe.agent.distributed``); rank 0 alone warm-starts and writes the run's files.

The parts live apart, each with its own config (``lightswe.agent.train_config``): the task stream
(``task_stream``), the model (``train_model``), the sampling engines (``sampling``), the warm start
(``warm_start``), the step's arithmetic (``train_step``) and the command line (``train_cli``). This module is
the loop only.

Example::

    cfg = TrainConfig(out_dir="runs/t1", steps=4)
    summary = train(cfg)      # {"success_rate_first": ..., "success_rate_last": ..., ...}
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from lightswe.agent.advantages import fill_batch
from lightswe.agent.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from lightswe.agent.cispo import LOSSES
from lightswe.agent.distributed import DistContext, refresh_sampler
from lightswe.agent.learner import Learner, shard_model
from lightswe.agent.metrics import MetricsLog, plot_curves
from lightswe.agent.sampling import Rollouts
from lightswe.agent.task_stream import TaskStream, arith_spec, load_tasks, tasks_at
from lightswe.agent.train_cli import FREE_ON_RESUME, SHORTCUTS
from lightswe.agent.train_config import SHORT_PROMPT, TrainConfig
from lightswe.agent.train_model import build_model, check_device, check_model_spec, sampler_copy
from lightswe.agent.train_step import batch_from, overlong_metric, rollout_metrics, step_advantages, step_lr
from lightswe.agent.trajectory import Trajectory
from lightswe.agent.warm_start import WarmStartConfig, warm_start
from lightswe.errors import UserInputError
from lightswe.model.generation import row_seed
from lightswe.settings import check_out_dir, check_resume, flatten, to_dict, write_config
from tqdm import tqdm

__all__ = ["SHORT_PROMPT", "TrainConfig", "WarmStartConfig", "check_distributed", "tasks_at", "train"]

CURVE_KEYS = ("success_rate", "eval_success_rate", "reward_mean", "loss", "clip_fraction", "entropy", "grad_norm",
              "filtered_share", "logprob_mismatch_abs")


def check_distributed(cfg: TrainConfig, world: int) -> None:
    """Refuse settings that cannot work with ``world`` torchrun ranks, naming the fix."""
    if world <= 1:
        return
    if cfg.sampler.ray:
        raise UserInputError(f"--ray under torchrun (WORLD_SIZE={world}) is not supported: each rank already runs "
                             "its share of the episodes in local sandboxes. Drop --ray, or run one process (no "
                             "torchrun) with --ray to put the episodes on Ray actors.")
    if cfg.tasks_per_step < world:
        raise UserInputError(f"tasks_per_step={cfg.tasks_per_step} < {world} ranks: every rank runs whole task "
                             f"groups, so some rank would have none; use --tasks-per-step >= {world} (a multiple "
                             f"of {world} balances the ranks) or fewer ranks")


def train(cfg: TrainConfig, *, allow_change: tuple[str, ...] = ()) -> dict[str, float]:
    """Single process, or every rank of a torchrun job (see ``lightswe.agent.distributed``).

    A run folder that already holds a run (its ``config.json``) is resumed; settings other than that run's are
    refused unless named in ``allow_change`` (dotted names, e.g. ``("steps", "learner.lr")``; where and how fast
    it runs may always change: ``FREE_ON_RESUME``). Returns the run's summary (first/last success rates,
    warm-start statistics).

    Raises:
        UserInputError: settings that cannot run here, or changed on resume (checked before any work).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg.__post_init__()  # fields may have been set after construction
    check_out_dir(cfg.out_dir)
    check_resume(Path(cfg.out_dir), cfg, allow=allow_change, free=FREE_ON_RESUME, shortcuts=SHORTCUTS,
                 command="train")
    check_model_spec(cfg.model)
    check_device(cfg.device)
    for spec in (cfg.data.tasks, cfg.data.eval_tasks):  # a task file that does not load fails before the folder
        if spec and not spec.startswith("arith:"):      # is written (the arithmetic family is checked by name)
            load_tasks(spec)
    cfg.sampler.check(world)
    check_distributed(cfg, world)
    with DistContext.from_env(cfg.device) as ctx:  # the group torn down here, also on an error (DistContext.close)
        return _train(dataclasses.replace(cfg, device=ctx.device), ctx)


TRAIN_STREAM, EVAL_STREAM = 1, 2  # job_seed_base keys: a step's draws, the held-out evaluations


def job_seed_base(seed: int, *key: int) -> int:
    """The seed a rollout passes to ``plan_jobs`` (which adds 1000 x task index + sample index): ``row_seed(seed,
    *key)`` (NumPy's SeedSequence spawn) times 2^32, so the episodes of different steps, draws, evaluations and run
    seeds never share a seed (``seed * 7919 + step`` gave sample i of step s and sample i-1 of step s+1 the same
    random draws). Evaluations use one key for every step: each evaluation draws the same random numbers, so
    held-out scores of two steps differ by the weights only (common random numbers)."""
    return (row_seed(seed, *key) % 2**30) << 32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _train(cfg: TrainConfig, ctx: DistContext) -> dict[str, float]:
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg, command="train")
    seed_everything(cfg.seed)
    model, tokenizer = build_model(cfg.model, device=cfg.device, seed=cfg.seed)
    name = cfg.model if cfg.model.startswith("hf:") else f"model:{cfg.model}"  # the policy spec that samples it
    rollouts = Rollouts(cfg.sampler, agent=cfg.agent, model=model, tokenizer=tokenizer, name=name,
                        work_dir=out, env_kwargs={"hack_policy": cfg.hack_policy},
                        autocast_dtype=cfg.learner.autocast_dtype)
    tasks, eval_tasks = [], []
    for turn in (True, False):  # rank 0 first: the arithmetic family builds its git repository once
        if ctx.main is turn:
            tasks = load_tasks(cfg.data.tasks)
            eval_tasks = load_tasks(cfg.data.eval_tasks) if cfg.data.eval_tasks else []
        ctx.barrier()
    summary: dict[str, float] = {}
    resuming = ctx.broadcast_object(latest_checkpoint(ckpt_dir) is not None)

    if not resuming and cfg.warm_start.enabled and cfg.data.tasks.startswith("arith:"):
        stats = None
        if ctx.main:  # unsharded, on rank 0 only (its scripted episodes run once); then copied to every rank
            t0 = time.perf_counter()
            stats = warm_start(cfg.warm_start, model=model, tokenizer=tokenizer, rollouts=rollouts,
                               words=arith_spec(cfg.data.tasks)[1], out_dir=out / "warm_start", seed=cfg.seed)
            stats["warm_start_seconds"] = time.perf_counter() - t0
            print(f"warm start: {stats}", flush=True)
        summary.update(ctx.broadcast_object(stats))
        ctx.broadcast_module(model)

    sampler = model  # one process: the sampler is the learner's model, in sync by construction
    if ctx.distributed:  # the learner's copy is sharded; each rank samples from a full copy refreshed per update
        sampler = sampler_copy(model, device=cfg.device)
        shard_model(model)
        rollouts.model = sampler
    # train the distribution the sampler draws from: softmax(logits / T) at the agent's temperature
    learner = Learner(model, LOSSES[cfg.loss](cfg.loss_config),
                      dataclasses.replace(cfg.learner, temperature=cfg.agent.temperature))
    stream = TaskStream(tasks, seed=cfg.seed)

    start = 0
    if resuming:
        state = load_checkpoint(ckpt_dir, model=model, optimizer=learner.optimizer)
        start, stream.cursor, learner.updates = state["step"], state["cursor"], state["updates"]
        summary.update(state.get("summary", {}))
        if ctx.distributed:
            refresh_sampler(sampler, model)
        if ctx.main:
            for stale in (out / "rollouts").glob("step-*"):  # made by weights after the checkpoint: redo them
                if int(stale.name.split("-")[1]) > start + 1:
                    shutil.rmtree(stale)
            print(f"resumed from step {start} (cursor {stream.cursor})", flush=True)
        ctx.barrier()
    # drop what was logged after the checkpoint resumed from (or by an attempt stopped before its first one): those
    # steps run again
    metrics_log = (MetricsLog(out, hparams=flatten(to_dict(cfg)), logger=cfg.log,
                              purge_step=start + 1 if resuming else 0) if ctx.main else None)
    if ctx.distributed:  # images built once, by rank 0, before ranks race for them
        if ctx.main:
            most = max(cfg.steps - start, 0) * cfg.tasks_per_step * (1 + cfg.resample_rounds)  # every draw
            rollouts.prepare(list({t.instance_id: t for t in stream.peek(most) + eval_tasks}.values()))
        ctx.barrier()

    def save(step: int) -> None:
        save_checkpoint(ckpt_dir, step=step, model=model, optimizer=learner.optimizer, keep=cfg.keep_checkpoints,
                        state={"cursor": stream.cursor, "updates": learner.updates, "summary": summary})

    def evaluate(step: int) -> None:
        if eval_tasks:
            m = evaluate_step(cfg, ctx, rollouts, eval_tasks, out, step)
            summary.setdefault("eval_success_rate_first", m["eval_success_rate"])
            summary["eval_success_rate_last"] = m["eval_success_rate"]
            if ctx.main:
                metrics_log.write(step=step, metrics=m)

    if start == 0:
        evaluate(0)
    # overall progress with an ETA on stderr (rank 0); the step lines go to stdout above it
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=not (ctx.main and cfg.progress))
    try:
        for step in range(start + 1, cfg.steps + 1):
            # 1. rollouts: one draw, or (dynamic sampling) more until enough groups carry signal
            t0 = time.perf_counter()
            trajs, draws = collect_step(cfg, ctx, rollouts, stream, out, step)
            (t_roll,) = ctx.max([time.perf_counter() - t0])
            # 2. advantages and metrics over every rank's episodes
            adv = step_advantages(trajs, cfg.advantages, overlong_filter=cfg.overlong_filter, overlong=cfg.overlong,
                                  max_tokens=cfg.overlong_max_tokens())
            groups, filtered = ctx.sum([adv.groups, adv.groups_filtered])
            m = rollout_metrics(trajs, reduce=ctx.sum)
            if cfg.overlong.buffer_tokens:  # DAPO's soft punishment: the mean length penalty of the graded runs
                m["overlong_penalty"] = overlong_metric(trajs, cfg.overlong, cfg.overlong_max_tokens(),
                                                        reduce=ctx.sum)
            m.update(filtered_share=filtered / groups if groups else 0.0, rollout_seconds=t_roll,
                     draws=float(draws))
            # 3. the update. No group with signal, no optimiser step: the policy gradient is zero, and an AdamW
            # step would only replay stale momentum (with kept equal-reward groups, such steps drifted a solved
            # tiny model into collapse). Decided alike on every rank; a rank with no kept rows still joins.
            if groups > filtered:
                t1 = time.perf_counter()
                m["lr"] = step_lr(cfg.learner.lr, step, steps=cfg.steps, final_lr_ratio=cfg.final_lr_ratio)
                for group in learner.optimizer.param_groups:
                    group["lr"] = m["lr"]
                kept = [i for i, k in enumerate(adv.keep) if k]
                m.update(learner.step(batch_from([trajs[i] for i in kept], [adv.values[i] for i in kept])))
                if ctx.distributed:
                    refresh_sampler(sampler, model)
                rollouts.sync(model)
                m["update_seconds"] = time.perf_counter() - t1
            # 4. log, evaluate, checkpoint
            summary.setdefault("success_rate_first", m["success_rate"])
            summary["success_rate_last"] = m["success_rate"]
            if ctx.main:
                metrics_log.write(step=step, metrics=m)
                bar.write(step_line(step, cfg.steps, m, updated=groups > filtered), file=sys.stdout)
                sys.stdout.flush()
                bar.set_postfix(success=f"{m['success_rate']:.2f}",  # a step without an update has no loss
                                loss=f"{m['loss']:.3f}" if m.get("loss") is not None else "-")
                bar.update(1)
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                evaluate(step)
            if step % cfg.checkpoint_every == 0 and step != cfg.steps:  # the last: after the final evaluation
                save(step)
    finally:  # also on Ctrl-C: the bar's last line must not follow the interrupt message
        bar.close()
    if start < cfg.steps:
        evaluate(cfg.steps)
        save(cfg.steps)
    rollouts.close()
    if ctx.main:
        metrics_log.close()
        sampler.save_pretrained(out / "final")  # full weights (under FSDP: the refreshed sampler copy)
        plot_curves(out / "metrics.jsonl", out / "curves.png", keys=CURVE_KEYS,
                    title=f"lightswe train ({cfg.loss}, {cfg.model})")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    ctx.barrier()
    return summary


def collect_step(cfg: TrainConfig, ctx: DistContext, rollouts: Rollouts, stream: TaskStream, out: Path,
                 step: int) -> tuple[list[Trajectory], int]:
    """This rank's episodes of ``step`` (every draw's) and the number of draws. Each draw takes the next tasks from
    the stream (G episodes each); with dynamic sampling, draws go on while fewer than ``tasks_per_step`` groups
    over all ranks carry signal; every draw's groups go to the advantages."""
    draws: list[list[Trajectory]] = []
    step_dir = out / "rollouts" / f"step-{step:04d}"

    def draw(count: int) -> list[list[Trajectory]]:
        k = len(draws)
        mine, first = ctx.share(stream.take(count))
        folder = step_dir / f"draw-{k}" if k else step_dir
        # job seeds as in one process: plan_jobs adds 1000 x the task's index in the list it is given
        trajs = rollouts.run(mine, rank_dir(folder, ctx), group_size=cfg.group_size, round_=step, draw=k,
                             seed=job_seed_base(cfg.seed, TRAIN_STREAM, step, k) + 1_000 * first,
                             version=step - 1) if mine else []
        draws.append(trajs)
        by_group: dict[str, list[Trajectory]] = {}
        for t in trajs:
            by_group.setdefault(t.group_id, []).append(t)
        return list(by_group.values())

    def has_signal(group: list[Trajectory]) -> bool:
        return step_advantages(group, cfg.advantages, overlong_filter=cfg.overlong_filter, overlong=cfg.overlong,
                               max_tokens=cfg.overlong_max_tokens()).groups_filtered == 0

    fill_batch(draw, has_signal, cfg.tasks_per_step, max_rounds=1 + cfg.resample_rounds,
               total=lambda n: int(ctx.sum([n])[0]))
    return [t for trajs in draws for t in trajs], len(draws)


def evaluate_step(cfg: TrainConfig, ctx: DistContext, rollouts: Rollouts, eval_tasks: list, out: Path,
                  step: int) -> dict[str, float]:
    """Held-out success with the weights after ``step`` (``eval_group_size`` episodes per task, over all ranks)."""
    mine, first = ctx.share(eval_tasks)
    trajs = rollouts.run(mine, rank_dir(out / "eval" / f"step-{step:04d}", ctx), group_size=cfg.eval_group_size,
                         round_=step, seed=job_seed_base(cfg.seed, EVAL_STREAM) + 1_000 * first, version=step
                         ) if mine else []
    m = rollout_metrics(trajs, prefix="eval_", reduce=ctx.sum)
    if ctx.main:
        print(f"eval step {step}: success {m['eval_success_rate']:.3f} on {int(m['eval_episodes'])} episodes",
              flush=True)
    return m


def rank_dir(path: Path, ctx: DistContext) -> Path:
    """Each rank writes (and reads back) only its own episodes."""
    return path / f"rank-{ctx.rank}" if ctx.distributed else path


def step_line(step: int, steps: int, m: dict[str, float], *, updated: bool) -> str:
    update = (f"loss {m['loss']:.4f} clip {m.get('clip_fraction', 0.0):.3f}" if updated
              else "no update (every group had equal rewards)")
    return (f"step {step}/{steps}: success {m['success_rate']:.3f} reward {m['reward_mean']:.3f} "
            f"filtered {m['filtered_share']:.2f} {update} ({m['rollout_seconds']:.0f}s rollout)")
