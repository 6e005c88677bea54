"""``lightswe train``'s settings: one typed config composed of each part's own small config.

No torch here: the command line builds (and validates) it before anything heavy is imported. Every number is
checked in ``__post_init__`` with a one-line :class:`~lightswe.errors.UserInputError` naming the option, what
was wrong and the fix, so a bad value fails before any work. The parts take only their own piece:

========================  ===================================================
``data``                  :class:`~lightswe.agent.task_stream.TaskStreamConfig` (task stream)
``sampler``               :class:`~lightswe.agent.sampling.SamplerConfig` (sampling engine)
``warm_start``            :class:`~lightswe.agent.warm_start.WarmStartConfig` (behaviour cloning)
``agent``                 :class:`~lightswe.agent.loop.AgentConfig` (one episode)
``learner`` / ``loss_config`` / ``advantages``  the update (``lightswe.agent.learner_config``, ``advantages``)
``log``                   :class:`~lightswe.agent.metrics.LogConfig` (TensorBoard, W&B)
========================  ===================================================

Example::

    cfg = TrainConfig(out_dir="runs/t1", steps=4, data=TaskStreamConfig(eval_tasks=""))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lightswe.agent.advantages import AdvantageConfig, OverlongConfig
from lightswe.agent.early_stop import EarlyStopConfig
from lightswe.agent.learner_config import LearnerConfig, LossConfig
from lightswe.agent.loop import AgentConfig
from lightswe.agent.metrics import LogConfig
from lightswe.agent.sampling import SamplerConfig
from lightswe.agent.task_stream import TaskStreamConfig
from lightswe.agent.warm_start import WarmStartConfig
from lightswe.errors import need

# Short on purpose: a byte-level tiny model reads every character of it at every step.
SHORT_PROMPT = "One tool call per turn, e.g.\n{example}"

LOSS_NAMES = ("cispo", "dapo", "grpo")  # lightswe.agent.cispo.LOSSES
AUTOCAST_DTYPES = (None, "bfloat16", "float16")  # LearnerConfig.autocast_dtype: torch dtype names


def _agent_default() -> AgentConfig:
    return AgentConfig(max_steps=2, max_context_tokens=1024, max_new_tokens=160, max_format_errors=1, temperature=0.5,
                       system_prompt=SHORT_PROMPT, early_stop=EarlyStopConfig(enabled=False))


def _learner_default() -> LearnerConfig:
    # AdamW eps: the paper's 1e-15 (LearnerConfig's default) is for large models. On the tiny model it turns the
    # small but consistent gradients of format tokens (pushed down in the few failed samples of a mostly solved
    # group, barely pushed up where they are already certain) into lr-sized steps, and the tool-call format
    # collapsed within 7-14 steps at every lr tried (5e-4 to 2e-3, also with eps 1e-4). With eps 1e-3 small
    # gradients take small steps: the same runs kept the format and learned the operator (see the README).
    return LearnerConfig(lr=3e-3, eps=1e-3, minibatches=2, micro_batch_size=8)


def _advantages_default() -> AdvantageConfig:
    # Equal-reward groups stay in the batch with advantage 0 (no gradient) so that the token-level normaliser is
    # the whole mini-batch (--learner.minibatches of them per generation batch; one holding only such groups takes
    # no optimiser step): filtered, a lone group with signal in a mostly solved step got 4x the weight per
    # token, and one such update (7 successes, one wrong operator) destroyed the tiny model's tool-call format at
    # step 7 of a default run (seed 1). Costs the forward/backward of those rows; filter_equal=True skips them.
    # Advantages are mean-centred, not divided by the group's std (Dr. GRPO, Liu et al. 2025): dividing gives the
    # one failure of a 7-of-8 group -2.65 instead of -0.875. Its tokens after the wrong operator (the call's tail
    # and the whole submit turn, the same text as the successes' but in a context holding the wrong operator) do
    # not cancel against the successes, so that weight pushes the tool-call format itself down: replaying a
    # collapsed default run offline, the std-scaled step-3 update sent 41% of first turns to format errors (its
    # negative rows alone: 95%), the mean-centred one none, while '+' still rose (see the README).
    return AdvantageConfig(filter_equal=False, scale_by_std=False)


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """RL on the embedded defaults: the tiny model on the arithmetic bug family, minutes on a CPU."""

    # Run directory: config.json, metrics, checkpoints, episodes; a rerun resumes from its checkpoints.
    out_dir: str = "runs/train"
    # Starting model: a preset (tiny, small; random init from --seed), a checkpoint directory, or hf:DIR (a
    # transformers causal LM, Qwen2 / Llama family, with its ChatML tokenizer; see lightswe.model.hf).
    model: str = "tiny"
    # RL steps (each: rollouts, advantages, one learner update).
    steps: int = 10
    # Tasks (groups) per step.
    tasks_per_step: int = 4
    # G episodes per task: the group of the group-relative advantages.
    group_size: int = 8
    # Episodes per held-out task at each evaluation.
    eval_group_size: int = 8
    # Also evaluate every N steps (0: before the first and after the last step only).
    eval_every: int = 5
    # Seed of the initial weights, the task order and the episodes.
    seed: int = 0
    # Save a checkpoint every N steps (and at the last).
    checkpoint_every: int = 1
    # Checkpoints kept on disk (older ones are removed).
    keep_checkpoints: int = 2
    # Policy loss: cispo (MiniMax-M1), dapo or grpo (each with its own clip range).
    loss: Literal["cispo", "dapo", "grpo"] = "cispo"
    # Linear decay of the RL learning rate to lr * this at the last step (1: constant); derived from the step,
    # so a resumed run continues the same schedule.
    final_lr_ratio: float = 0.1
    # DAPO dynamic sampling: while fewer than tasks_per_step groups carry signal (rewards not all equal), draw
    # up to this many more rounds of new tasks (the data cursor moves on). 0: one draw per step (MiniMax-M1).
    resample_rounds: int = 0
    # DAPO overlong filtering: leave episodes cut at the token budget out of the advantages and the loss
    # (still counted as failures in the success metrics). On the tiny model one such rambling sample made the
    # update that destroyed the tool-call format in a default run.
    overlong_filter: bool = True
    # DAPO soft overlong punishment (reward + a length penalty over the last --overlong.buffer-tokens of the
    # episode's generation budget); off by default (buffer 0).
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    # Episodes whose code reacts to the test runner (suspected reward hacks): keep (flagged in the trajectory) or
    # zero (reward 0.0, so the policy is never paid for them).
    hack_policy: Literal["keep", "zero"] = "keep"
    # Torch device of the learner (and the built-in sampler): cpu, cuda, cuda:1.
    device: str = "cpu"
    # Progress bar with an ETA on stderr.
    progress: bool = True
    # Training and held-out tasks.
    data: TaskStreamConfig = field(default_factory=TaskStreamConfig)
    # Sampling engine and where the episodes run.
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # Behaviour cloning of scripted trajectories before RL (teaches the tool-call format).
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    # One episode: step and token budgets, sampling, system prompt.
    agent: AgentConfig = field(default_factory=_agent_default)
    # Optimiser (AdamW) and the update's batching.
    learner: LearnerConfig = field(default_factory=_learner_default)
    # Clip range of the policy loss (--loss).
    loss_config: LossConfig = field(default_factory=LossConfig)
    # Group-relative advantages.
    advantages: AdvantageConfig = field(default_factory=_advantages_default)
    # TensorBoard and Weights & Biases.
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        need(self.steps >= 1, "--steps", self.steps, "must be >= 1", "e.g. --steps 10 (a rerun with more steps "
             "continues a run)")
        need(self.tasks_per_step >= 1, "--tasks-per-step", self.tasks_per_step, "must be >= 1", "e.g. 4")
        need(self.group_size >= 2, "--group-size", self.group_size, "must be >= 2 (group-relative advantages "
             "compare the episodes of a task)", "e.g. --group-size 8")
        need(self.eval_group_size >= 1, "--eval-group-size", self.eval_group_size, "must be >= 1",
             "e.g. 8, or --data.eval-tasks '' to skip evaluation")
        need(self.eval_every >= 0, "--eval-every", self.eval_every, "must be >= 0",
             "0 evaluates before the first and after the last step only")
        need(self.checkpoint_every >= 1, "--checkpoint-every", self.checkpoint_every, "must be >= 1", "e.g. 1")
        need(self.keep_checkpoints >= 1, "--keep-checkpoints", self.keep_checkpoints, "must be >= 1", "e.g. 2")
        need(self.loss in LOSS_NAMES, "--loss", self.loss, "unknown loss", f"one of {', '.join(LOSS_NAMES)}")
        need(0.0 <= self.final_lr_ratio <= 1.0, "--final-lr-ratio", self.final_lr_ratio, "must be in [0, 1]",
             "1 keeps the lr constant")
        need(self.resample_rounds >= 0, "--resample-rounds", self.resample_rounds, "must be >= 0",
             "0 turns dynamic sampling off")
        need(bool(self.out_dir), "--out", self.out_dir, "must name a directory", "e.g. --out runs/t1")
        need(self.hack_policy in ("keep", "zero"), "--hack-policy", self.hack_policy, "unknown policy",
             "keep (flag only) or zero (reward 0.0)")
        check_agent(self.agent, prefix="--agent.")
        check_learner(self.learner, prefix="--learner.")
        check_loss(self.loss_config, prefix="--loss-config.")
        need(self.advantages.eps > 0, "--advantages.eps", self.advantages.eps, "must be > 0", "e.g. 1e-6")
        o = self.overlong
        need(o.max_tokens is None or o.max_tokens >= 1, "--overlong.max-tokens", o.max_tokens, "must be >= 1",
             "e.g. 4096, or leave it unset for the episode's generation budget")
        need(0 <= o.buffer_tokens <= self.overlong_max_tokens(), "--overlong.buffer-tokens", o.buffer_tokens,
             f"must be in [0, L_max = {self.overlong_max_tokens()}] (L_max is --overlong.max-tokens, else "
             "min(--agent.max-context-tokens, --agent.max-steps x --agent.max-new-tokens))",
             "e.g. a quarter of L_max, or 0 to turn the punishment off")
        need(o.factor >= 0, "--overlong.factor", o.factor, "must be >= 0", "e.g. 1.0 (DAPO)")

    def overlong_max_tokens(self) -> int:
        """L_max of the soft overlong punishment: ``--overlong.max-tokens``, else the most policy tokens an
        episode can generate, min(max_context_tokens, max_steps x max_new_tokens)."""
        a = self.agent
        return self.overlong.max_tokens or min(a.max_context_tokens, a.max_steps * a.max_new_tokens)


def check_agent(agent: AgentConfig, *, prefix: str) -> None:
    """Numbers of one episode's settings (also used by ``rollout`` and ``eval``, whose options have no prefix)."""
    need(agent.max_steps >= 1, f"{prefix}max-steps", agent.max_steps, "must be >= 1 (tool calls per episode)",
         "e.g. 30")
    need(agent.max_context_tokens >= 1, f"{prefix}max-context-tokens", agent.max_context_tokens, "must be >= 1",
         "e.g. 32768")
    need(agent.max_new_tokens >= 1, f"{prefix}max-new-tokens", agent.max_new_tokens, "must be >= 1", "e.g. 2048")
    need(agent.max_format_errors >= 1, f"{prefix}max-format-errors", agent.max_format_errors, "must be >= 1",
         "e.g. 3")
    need(agent.temperature > 0, f"{prefix}temperature", agent.temperature, "must be > 0 (the learner trains "
         "softmax(logits / T))", "e.g. 1.0")
    need(0.0 < agent.top_p <= 1.0, f"{prefix}top-p", agent.top_p, "must be in (0, 1]", "1.0 turns it off")


def check_learner(learner: LearnerConfig, *, prefix: str) -> None:
    need(learner.lr > 0, f"{prefix}lr", learner.lr, "must be > 0", "e.g. 3e-3")
    need(learner.eps > 0, f"{prefix}eps", learner.eps, "must be > 0 (AdamW eps)", "e.g. 1e-3")
    need(all(0.0 <= b < 1.0 for b in learner.betas), f"{prefix}betas", learner.betas, "each must be in [0, 1)",
         "e.g. 0.9 0.95")
    need(learner.weight_decay >= 0, f"{prefix}weight-decay", learner.weight_decay, "must be >= 0", "e.g. 0")
    need(learner.grad_clip >= 0, f"{prefix}grad-clip", learner.grad_clip, "must be >= 0", "0 turns clipping off")
    need(learner.minibatches >= 1, f"{prefix}minibatches", learner.minibatches, "must be >= 1", "e.g. 2")
    need(learner.epochs >= 1, f"{prefix}epochs", learner.epochs, "must be >= 1", "e.g. 1")
    need(learner.micro_batch_size >= 1, f"{prefix}micro-batch-size", learner.micro_batch_size, "must be >= 1",
         "e.g. 8")
    need(learner.aux_loss_coef >= 0, f"{prefix}aux-loss-coef", learner.aux_loss_coef, "must be >= 0", "e.g. 0")
    need(learner.temperature > 0, f"{prefix}temperature", learner.temperature, "must be > 0 (the policy trained is "
         "softmax(logits / T))", "e.g. 1.0, the rollout's temperature")
    need(learner.autocast_dtype in AUTOCAST_DTYPES, f"{prefix}autocast-dtype", learner.autocast_dtype,
         "unknown dtype", "bfloat16 or float16 (mixed precision, GPUs), or leave it unset for fp32")


def check_loss(loss: LossConfig, *, prefix: str) -> None:
    """The clip range ``PolicyLoss`` accepts (an IS-weight/ratio bound of 1 + eps_high > 1; 1 - eps_low in (0, 1]),
    checked with the other settings: the loss would refuse it only once the learner is built, after the warm start."""
    need(loss.eps_high is None or loss.eps_high > 0, f"{prefix}eps-high", loss.eps_high, "must be > 0",
         "e.g. 0.28, or leave it unset for the loss's own default")
    need(loss.eps_low is None or 0 <= loss.eps_low < 1, f"{prefix}eps-low", loss.eps_low, "must be in [0, 1)",
         "e.g. 0.2, or leave it unset for the loss's own default (CISPO: no lower bound)")
