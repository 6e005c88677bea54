"""Replay a recorded train run offline: warm start from its recorded scripted episodes, then each recorded RL
step's learner update; after each, compare the learner's log-probs with the next step's recorded sampler
log-probs (equal => the weights are exactly the run's). Usage: replay.py RUN_DIR STEPS [SAVE_DIR]
(WS_CACHE: where the warm-started weights are cached; delete it for another run or seed)."""

import os
import random
import sys
import dataclasses
import json
from pathlib import Path
import torch
from lightswe.agent.trajectory import read_trajectories, EpisodeStatus
from lightswe.agent.cispo import SFTLoss, LOSSES
from lightswe.agent.learner import Learner, LearnerConfig, sequence_logprobs
from lightswe.agent.advantages import AdvantageConfig
from lightswe.agent.train_config import TrainConfig
from lightswe.agent.train_step import batch_from, step_advantages, step_lr
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

run, steps = Path(sys.argv[1]), int(sys.argv[2])
cfg = TrainConfig()
# the recorded run's own advantage settings (32c49e2: divided by the group std)
cfg.advantages = AdvantageConfig(**json.loads((run / "config.json").read_text())["advantages"])
torch.manual_seed(cfg.seed)
random.seed(cfg.seed)
model = MiniMaxForCausalLM(MiniMaxConfig.preset("tiny"))
model.init_weights(seed=cfg.seed)
ws_cache = Path(os.environ.get("WS_CACHE", "/tmp/ws_seed0.pt"))
if ws_cache.exists():
    model.load_state_dict(torch.load(ws_cache))
else:
    trajs = []
    for shift in range(4):
        trajs += [
            t
            for t in sorted(read_trajectories(run / "warm_start" / f"rollouts-{shift}"), key=lambda t: t.episode_id)
            if t.status is EpisodeStatus.SUBMITTED
        ]
    w = cfg.warm_start
    learner = Learner(
        model, SFTLoss(), LearnerConfig(lr=w.lr, minibatches=1, micro_batch_size=w.batch_size, grad_clip=1.0)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        learner.optimizer, lambda i: 1.0 - (1.0 - w.final_lr_ratio) * min(i / max(w.steps - 1, 1), 1.0)
    )
    rng = random.Random(cfg.seed)
    order = []
    losses = []
    for _ in range(w.steps):
        while len(order) < w.batch_size:
            order += rng.sample(range(len(trajs)), len(trajs))
        pick, order = [trajs[i] for i in order[: w.batch_size]], order[w.batch_size :]
        losses.append(learner.step(batch_from(pick, [1.0] * len(pick)))["loss"])
        sched.step()
    print("warm start loss", losses[0], losses[-1], flush=True)
    torch.save(model.state_dict(), ws_cache)


def check(step):
    d = run / "rollouts" / f"step-{step:04d}"
    if not d.exists():
        return
    diffs = []
    for t in sorted(read_trajectories(d), key=lambda t: t.episode_id)[:6]:
        with torch.no_grad():
            lp, _ = sequence_logprobs(model, torch.tensor([t.token_ids]), temperature=cfg.agent.temperature)
        m = torch.tensor(t.loss_mask, dtype=torch.bool)
        m[0] = False
        diffs.append((lp[0] - torch.tensor(t.logprobs))[m].abs().max().item())
    print(f"weights before step {step}: max |learner - recorded sampler| logprob = {max(diffs):.2e}", flush=True)


learner = Learner(
    model, LOSSES[cfg.loss](cfg.loss_config), dataclasses.replace(cfg.learner, temperature=cfg.agent.temperature)
)
check(1)
for step in range(1, steps + 1):
    trajs = sorted(read_trajectories(run / "rollouts" / f"step-{step:04d}"), key=lambda t: t.episode_id)
    adv = step_advantages(trajs, cfg.advantages, overlong_filter=cfg.overlong_filter)
    if adv.groups > adv.groups_filtered:
        lr = step_lr(cfg.learner.lr, step, steps=cfg.steps, final_lr_ratio=cfg.final_lr_ratio)
        for g in learner.optimizer.param_groups:
            g["lr"] = lr
        kept = [i for i, k in enumerate(adv.keep) if k]
        m = learner.step(batch_from([trajs[i] for i in kept], [adv.values[i] for i in kept]))
        print(
            step,
            {
                k: round(v, 5)
                for k, v in m.items()
                if k in ("loss", "grad_norm", "logprob_mismatch_abs", "prob_corr", "ratio_min")
            },
            flush=True,
        )
    check(step + 1)
    if len(sys.argv) > 3:
        torch.save(model.state_dict(), Path(sys.argv[3]) / f"w{step}.pt")
