"""The arithmetic of one RL step, as pure functions of its episodes: advantages, the learner's batch, the learning
rate and the rollout metrics. No I/O; the loop (``lightswe.agent.train``) calls them in this order.

Example::

    adv = step_advantages(trajs, AdvantageConfig(), overlong_filter=True)
    kept = [i for i, k in enumerate(adv.keep) if k]
    batch = batch_from([trajs[i] for i in kept], [adv.values[i] for i in kept])
    lr = step_lr(3e-3, step=2, steps=10, final_lr_ratio=0.1)
"""

from __future__ import annotations

from lightswe.agent.advantages import AdvantageConfig, Advantages, group_advantages
from lightswe.agent.learner import TrainBatch
from lightswe.agent.trajectory import EpisodeStatus, Trajectory, check_tokens


def step_lr(lr: float, step: int, *, steps: int, final_lr_ratio: float) -> float:
    """The RL learning rate of ``step`` (1-based) of ``steps``: linear from ``lr`` to ``lr * final_lr_ratio`` at the
    last step (derived from the step number, so a resumed run continues the same schedule)."""
    done = (step - 1) / max(steps - 1, 1)
    return lr * (1.0 - (1.0 - final_lr_ratio) * min(done, 1.0))


def step_advantages(trajectories: list[Trajectory], cfg: AdvantageConfig, *, overlong_filter: bool) -> Advantages:
    """Group-relative advantages of a step's episodes. Left out (no advantage, no loss): ungraded runs
    (``Trajectory.graded``), and with ``overlong_filter`` (DAPO) the truncated ones."""
    return group_advantages([t.group_id for t in trajectories], [t.reward for t in trajectories],
                            [not t.graded or (overlong_filter and t.truncated) for t in trajectories], cfg)


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
