"""``lightswe train``'s command line: options -> :class:`~lightswe.agent.train_config.TrainConfig` -> ``train``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register_train(subparsers) -> None:
    from lightswe.agent.train_config import LOSS_NAMES, TrainConfig

    p = subparsers.add_parser("train", help="RL: rollouts with the built-in model, CISPO updates, repeat "
                                            "(embedded defaults: minutes on a CPU)",
                              epilog="Several GPUs: torchrun --nproc-per-node N -m lightswe train --device cuda ... "
                                     "(FSDP2 learner; each rank runs its share of the tasks; --concurrency is per "
                                     "rank).")
    d = TrainConfig()
    p.add_argument("--out", default=d.out_dir, help="run directory (resumes from its checkpoints)")
    p.add_argument("--model", default=d.model, help="preset (tiny, small), checkpoint directory, or hf:DIR (a transformers causal "
                                                         "LM with its ChatML tokenizer)")
    p.add_argument("--tasks", default=d.data.tasks, help="'arith:rl' (built-in family) or a JSONL of task instances")
    p.add_argument("--eval-tasks", default=d.data.eval_tasks, help="held-out tasks ('' skips evaluation)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--tasks-per-step", type=int, default=d.tasks_per_step)
    p.add_argument("--group-size", type=int, default=d.group_size, help="G samples per task")
    p.add_argument("--concurrency", type=int, default=d.sampler.concurrency)
    p.add_argument("--resample-rounds", type=int, default=d.resample_rounds,
                   help="DAPO dynamic sampling: up to N more draws of tasks while fewer than --tasks-per-step groups "
                        "have unequal rewards (0: only filter them)")
    p.add_argument("--loss", default=d.loss, choices=LOSS_NAMES)
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
    p.add_argument("--engine", default=d.sampler.engine, choices=["model", "vllm"],
                   help="sampling engine: the built-in model, or in-process vLLM with weights pushed every update")
    p.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="vllm.LLM keyword argument (repeatable; VALUE parsed as JSON when it can be)")
    p.add_argument("--device", default=d.device)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from lightswe.agent.sampling import SamplerConfig
    from lightswe.agent.task_stream import TaskStreamConfig
    from lightswe.agent.train_config import TrainConfig
    from lightswe.agent.warm_start import WarmStartConfig

    cfg = TrainConfig(out_dir=args.out, model=args.model, steps=args.steps, tasks_per_step=args.tasks_per_step,
                      group_size=args.group_size, resample_rounds=args.resample_rounds,
                      overlong_filter=args.overlong_filter, loss=args.loss, seed=args.seed, device=args.device,
                      data=TaskStreamConfig(tasks=args.tasks, eval_tasks=args.eval_tasks),
                      sampler=SamplerConfig(engine=args.engine, ray=args.ray, concurrency=args.concurrency,
                                            vllm_args=tuple(args.vllm_arg)),
                      warm_start=WarmStartConfig(steps=args.warm_start_steps), final_lr_ratio=args.final_lr_ratio)
    cfg.loss_config.eps_high = args.eps_high
    cfg.learner.lr, cfg.learner.eps, cfg.learner.behaviour = args.lr, args.adam_eps, args.behaviour
    cfg.learner.grad_clip = args.grad_clip
    from lightswe.agent.train import train

    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns the same summary
        print(json.dumps(summary, indent=1))
        print(f"curves: {Path(cfg.out_dir) / 'curves.png'}")
    return 0
