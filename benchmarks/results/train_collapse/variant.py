"""From the cached warm start, replay recorded steps 1..K of RUN with a variant of the update; print the format
health after each step. Usage: variant.py RUN K NAME (base: the run's own settings; nostd, lr1e-3, mb1, eps1e-2,
clip0.02, beta1_0: one setting changed; negonly/posonly: the last step's negative/positive rows only).
WS_CACHE: the warm-started weights replay.py cached."""

import json
import os
import sys
import dataclasses
from pathlib import Path
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fmt import health, prompts_and_canon
from lightswe.agent.trajectory import read_trajectories
from lightswe.agent.cispo import LOSSES
from lightswe.agent.learner import Learner
from lightswe.agent.advantages import AdvantageConfig
from lightswe.agent.train_config import TrainConfig
from lightswe.agent.train_step import batch_from, step_advantages, step_lr
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

run, K, name = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfg = TrainConfig()
learner_cfg = dataclasses.replace(cfg.learner, temperature=cfg.agent.temperature)
adv_cfg = AdvantageConfig(**json.loads((run / "config.json").read_text())["advantages"])  # the run's own
lr0 = cfg.learner.lr
rows_filter = None
if name == "nostd":
    adv_cfg = dataclasses.replace(adv_cfg, scale_by_std=False)
elif name == "lr1e-3":
    lr0 = 1e-3
elif name == "mb1":
    learner_cfg = dataclasses.replace(learner_cfg, minibatches=1, micro_batch_size=32)
elif name == "eps1e-2":
    learner_cfg = dataclasses.replace(learner_cfg, eps=1e-2)
elif name == "clip0.02":
    learner_cfg = dataclasses.replace(learner_cfg, grad_clip=0.02)
elif name == "beta1_0":
    learner_cfg = dataclasses.replace(learner_cfg, betas=(0.0, 0.95))
elif name in ("posonly", "negonly"):
    rows_filter = name
elif name != "base":
    raise SystemExit(f"unknown variant {name}")
model = MiniMaxForCausalLM(MiniMaxConfig.preset("tiny"))
model.load_state_dict(torch.load(os.environ.get("WS_CACHE", "/tmp/ws_seed0.pt")))
learner = Learner(model, LOSSES[cfg.loss](cfg.loss_config), learner_cfg)
data = prompts_and_canon(run)
for step in range(1, K + 1):
    trajs = sorted(read_trajectories(run / "rollouts" / f"step-{step:04d}"), key=lambda t: t.episode_id)
    adv = step_advantages(trajs, adv_cfg, overlong_filter=True)
    lr = step_lr(lr0, step, steps=cfg.steps, final_lr_ratio=cfg.final_lr_ratio)
    for g in learner.optimizer.param_groups:
        g["lr"] = lr
    kept = [i for i, k in enumerate(adv.keep) if k]
    vals = list(adv.values)
    if rows_filter and step == K:
        vals = [v if (v > 0) == (rows_filter == "posonly") else 0.0 for v in vals]
    m = learner.step(batch_from([trajs[i] for i in kept], [vals[i] for i in kept]))
    h = health(model, data)
    print(
        name,
        step,
        "grad_norm",
        round(m.get("grad_norm", 0), 4),
        "format",
        round(h[0], 2),
        h[1],
        "min canon lp",
        round(h[2], 3),
        flush=True,
    )
