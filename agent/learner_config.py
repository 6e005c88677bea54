"""The learner's settings (optimiser and policy loss), in a module without torch so that the command line can
build them without importing it. ``lightswe.agent.learner`` and ``lightswe.agent.cispo`` re-export them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True, slots=True)
class LossConfig:
    # Upper clip of the IS weight; None = the loss's own default (CISPO 2.0, DAPO 0.28, GRPO 0.2).
    # CISPO implementations differ (0.28 as DAPO, 2, 4, or an absolute cap of 5 -> eps_high=4): CISPO keeps the
    # gradient of clipped tokens either way, so a loose bound only limits how much one stale token can weigh.
    # 2.0 (a weight of at most 3) is our CISPO default.
    eps_high: float | None = None
    # Lower clip; None = the loss's default: no lower bound for CISPO, as the paper sets (PPO-style losses: 0.2).
    eps_low: float | None = None
    # The paper's generalised objective: drop tokens the PPO trust region would drop.
    token_mask: bool = False


@dataclass(kw_only=True, slots=True)
class LearnerConfig:
    lr: float = 1e-5  # AdamW learning rate (the train loop decays it, see --final-lr-ratio)
    betas: tuple[float, float] = (0.9, 0.95)  # beta2 0.95 as in the paper
    eps: float = 1e-15  # as in the paper: gradients are tiny at scale; raise it for fp16
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    minibatches: int = 2  # optimiser steps per generation batch (off-policy after the first)
    epochs: int = 1  # passes over the generation batch
    micro_batch_size: int = 4  # rows per forward/backward
    # Behaviour log-probs of the importance ratio: the sampler's, or recomputed by the learner before the update
    behaviour: Literal["sampler", "recompute"] = "sampler"
    # MoE load-balancing loss weight. 0 for RL from a trained model: the loss depends on how rows are grouped,
    # so with it on, accumulation is no longer exactly one big batch (MiniMax pre-training uses 0.001).
    aux_loss_coef: float = 0.0
    # The sampler's temperature: the policy being trained is softmax(logits / T), the distribution the tokens
    # were drawn from, so ratios compare like with like (set from the rollout's temperature).
    temperature: float = 1.0
    # Mixed precision for the forward ("bfloat16" on GPUs); weights and AdamW state stay fp32, the LM head keeps
    # fp32 accuracy (on CUDA as bf16x3 split products, ~1e-4; LIGHTSWE_HEAD=fp32 for fp32 GEMMs: model/head.py).
    autocast_dtype: str | None = None
