"""``lightswe train``'s command line: options and ``--config FILE`` -> a validated
:class:`~lightswe.agent.train_config.TrainConfig` -> resume check -> ``train``.

Every field of ``TrainConfig`` is an option (nested ones dotted: ``--learner.lr``, ``--agent.max-steps``); the
common ones also have the short spellings of :data:`SHORTCUTS`. Nothing heavy is imported until the settings
are valid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SHORTCUTS = {
    "--out": "--out-dir", "--tasks": "--data.tasks", "--eval-tasks": "--data.eval-tasks",
    "--concurrency": "--sampler.concurrency", "--ray": "--sampler.ray", "--engine": "--sampler.engine",
    "--vllm-arg": "--sampler.vllm-args", "--lr": "--learner.lr", "--adam-eps": "--learner.eps",
    "--grad-clip": "--learner.grad-clip", "--behaviour": "--learner.behaviour",
    "--eps-high": "--loss-config.eps-high", "--warm-start-steps": "--warm-start.steps",
    "--temperature": "--agent.temperature", "--max-steps": "--agent.max-steps", "--wandb": "--log.wandb",
}
# Settings a resumed run may change without --allow-change: where and how fast it runs, not what it learns.
FREE_ON_RESUME = frozenset({"out_dir", "sampler.concurrency", "sampler.ray", "sampler.vllm_args", "sampler.batch_invariant", "device",
                            "keep_checkpoints", "checkpoint_every", "progress", "log.tensorboard", "log.wandb",
                            "log.wandb_project", "log.wandb_name"})
HELP = "RL: rollouts with the built-in model, CISPO updates, repeat (embedded defaults: minutes on a CPU)"
DESCRIPTION = (HELP + ". Several GPUs: torchrun --nproc-per-node N -m lightswe train --device cuda ... (FSDP2 "
               "learner; each rank runs its share of the tasks; --concurrency is per rank). A rerun into the same "
               "--out resumes from its checkpoints.")


def register_train(subparsers) -> None:
    from lightswe.settings import typed_command

    typed_command(subparsers, ("train",), help=HELP, run=main)


def parse_train(argv: list[str]):
    """``argv`` -> ``(TrainConfig, allowed changes)``; raises UserInputError with one line."""
    from lightswe.agent.train_config import TrainConfig
    from lightswe.settings import parse

    return parse(TrainConfig, argv, prog="lightswe train", description=DESCRIPTION, shortcuts=SHORTCUTS)


def main(argv: list[str]) -> int:
    cfg, allow = parse_train(argv)
    from lightswe.agent.train import train  # torch: only once the settings are valid

    summary = train(cfg, allow_change=allow)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns the same summary
        print(json.dumps(summary, indent=1))
        print(f"curves: {Path(cfg.out_dir) / 'curves.png'}")
    return 0

