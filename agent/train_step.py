"""The arithmetic of one RL step, as pure functions of its episodes: advantages, the learner's batch, the learning
rate and the rollout metrics. No I/O; the loop (``lightswe.agent.train``) calls them in this order.

Example::

    adv = step_advantages(trajs, AdvantageConfig(), overlong_filter=True)
    kept = [i for i, k in enumerate(adv.keep) if k]
    batch = batch_from([trajs[i] for i in kept], [adv.values[i] for i in kept])
    lr = step_lr(3e-3, step=2, steps=10, final_lr_ratio=0.1)
"""

from __future__ import annotations

from lightswe.agent.advantages import (AdvantageConfig, Advantages, OverlongConfig, group_advantages,
                                      overlong_penalty)
from lightswe.agent.learner import TrainBatch
from lightswe.agent.trajectory import EpisodeStatus, Trajectory, check_tokens
from lightswe.errors import UserInputError


def step_lr(lr: float, step: int, *, steps: int, final_lr_ratio: float) -> float:
    """The RL learning rate of ``step`` (1-based) of ``steps``: linear from ``lr`` to ``lr * final_lr_ratio`` at the
    last step (derived from the step number, so a resumed run continues the same schedule)."""
    done = (step - 1) / max(steps - 1, 1)
    return lr * (1.0 - (1.0 - final_lr_ratio) * min(done, 1.0))


def step_advantages(trajectories: list[Trajectory], cfg: AdvantageConfig, *, overlong_filter: bool,
                    overlong: OverlongConfig | None = None, max_tokens: int | None = None) -> Advantages:
    """Group-relative advantages of a step's episodes. Left out (no advantage, no loss): ungraded runs
    (``Trajectory.graded``), and with ``overlong_filter`` (DAPO's overlong filtering) the truncated ones
    (``Trajectory.truncated``). With ``overlong`` (``buffer_tokens`` > 0) each graded run's reward is shaped first
    (``shaped_rewards``: DAPO's soft overlong punishment); ``max_tokens`` is L_max when ``overlong.max_tokens``
    is unset."""
    rewards = shaped_rewards(trajectories, overlong, max_tokens) if overlong else [t.reward for t in trajectories]
    return group_advantages([t.group_id for t in trajectories], rewards,
                            [not t.graded or (overlong_filter and t.truncated) for t in trajectories], cfg)


def shaped_rewards(trajectories: list[Trajectory], overlong: OverlongConfig, max_tokens: int | None = None
                   ) -> list[float | None]:
    """Each run's reward plus DAPO's soft overlong punishment of its length, ``overlong_penalty(|y|)`` with |y| =
    the policy's generated tokens of the episode (``Trajectory.num_generated_tokens``), L_max =
    ``overlong.max_tokens`` or else ``max_tokens``, L_cache = ``overlong.buffer_tokens``. An ungraded run's reward
    (None: the machine's failure) is never shaped. Off (``buffer_tokens`` 0): the rewards as they are.

    Raises:
        ValueError: the punishment is on and no L_max is given.
    """
    if not overlong.buffer_tokens:
        return [t.reward for t in trajectories]
    limit = overlong.max_tokens or max_tokens
    if limit is None:
        raise UserInputError("the overlong punishment needs L_max: OverlongConfig.max_tokens or max_tokens")
    return [t.reward + overlong_penalty(t.num_generated_tokens, max_tokens=limit,
                                        buffer_tokens=overlong.buffer_tokens, factor=overlong.factor)
            if t.graded else t.reward for t in trajectories]


def overlong_metric(trajectories: list[Trajectory], overlong: OverlongConfig, max_tokens: int | None = None,
                    reduce=None) -> float:
    """The mean soft overlong penalty (``shaped_rewards`` minus the reward) over the graded runs; ``reduce`` sums
    (penalty, count) over ranks first. 0.0 without graded runs."""
    graded = [t for t in trajectories if t.graded]
    penalties = [s - t.reward for s, t in zip(shaped_rewards(graded, overlong, max_tokens), graded)]
    total, count = [sum(penalties), float(len(penalties))]
    if reduce:
        total, count = reduce([total, count])
    return total / count if count else 0.0


def batch_from(trajectories: list[Trajectory], advantages: list[float]) -> TrainBatch:
    """Rows in group order, tagged with their group: the learner never splits a group across updates.

    Raises:
        TrajectoryFormatError: a trajectory whose token ids, mask and log-probs differ in length, or with a log-prob
        that is NaN, infinite or positive (``trajectory.check_tokens``), named by its episode id.
    """
    order = sorted(range(len(trajectories)), key=lambda i: trajectories[i].group_id)  # stable within a group
    rows = [trajectories[i] for i in order]
    for t in rows:  # one line naming the episode; never a NaN/inf log-prob or a misaligned row trained on
        check_tokens(t.token_ids, t.loss_mask, t.logprobs, where=f"episode {t.episode_id}")
    return TrainBatch.from_sequences([t.token_ids for t in rows], [t.loss_mask for t in rows],
                                     [t.logprobs for t in rows], [advantages[i] for i in order],
                                     group_ids=[t.group_id for t in rows])


def rollout_metrics(trajectories: list[Trajectory], prefix: str = "", reduce=None) -> dict[str, float]:
    """Success, reward and counts of a rollout; ``reduce`` (e.g. ``DistContext.sum``) sums the counts over
    ranks first, so every rank gets the metrics of all ranks' episodes."""
    graded = [t for t in trajectories if t.graded]
    counts = [len(graded), sum(t.resolved for t in graded), sum(t.reward for t in graded),
              sum(t.status is EpisodeStatus.SUBMITTED for t in graded), len(trajectories),
              sum(t.num_generated_tokens for t in trajectories), sum(t.truncated for t in graded)]
    graded_n, resolved, reward, submitted, episodes, tokens, truncated = reduce(counts) if reduce else counts
    n = max(graded_n, 1)
    return {f"{prefix}success_rate": resolved / n, f"{prefix}reward_mean": reward / n,
            f"{prefix}submitted": submitted / n, f"{prefix}truncated": truncated / n,
            f"{prefix}episodes": float(episodes),
            f"{prefix}runs_failed": float(episodes - graded_n), f"{prefix}generated_tokens": float(tokens)}
