"""Group-relative advantages: A_i = (R_i - mean_group R) / (std_group R + eps) (MiniMax-M1 / GRPO), std the
population std (ddof 0) of the group's valid rewards; ``scale_by_std=False``: R_i - mean_group R (Dr. GRPO).

Rules that keep the signal honest:
- a failed run (sandbox error, NaN/None reward) is *excluded*, never scored 0: an infrastructure failure is not
  evidence that the policy was wrong;
- a group whose valid rewards are all equal carries no signal (every advantage is 0) and is filtered
  (``filter_equal``; otherwise its runs stay with advantage 0: no gradient, but tokens in the normaliser);
- a group with one valid run gets advantage 0 (and is filtered as "equal").

``fill_batch`` is the DAPO dynamic-sampling hook: it keeps drawing groups until enough carry signal.

Example::

    adv = group_advantages(["a", "a", "b", "b"], [1.0, 0.0, 1.0, 1.0])
    adv.values  -> [1.0, -1.0, 0.0, 0.0];  adv.keep -> [True, True, False, False]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar


@dataclass(kw_only=True, slots=True)
class AdvantageConfig:
    eps: float = 1e-6  # added to the group's reward std before dividing
    scale_by_std: bool = True  # False: Dr. GRPO's mean-centred rewards only
    filter_equal: bool = True  # drop groups whose valid rewards are all equal


@dataclass(kw_only=True, slots=True)
class Advantages:
    values: list[float]  # one per run; 0.0 for excluded runs
    keep: list[bool]  # False: failed run or filtered group (no loss tokens)
    groups: int = 0
    groups_filtered: int = 0
    runs_failed: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def filtered_share(self) -> float:
        return self.groups_filtered / self.groups if self.groups else 0.0


def _valid(reward: float | None) -> bool:
    return reward is not None and not math.isnan(reward)


def group_advantages(group_ids: Sequence[Hashable], rewards: Sequence[float | None],
                     failed: Sequence[bool] | None = None, config: AdvantageConfig | None = None) -> Advantages:
    """Advantages for runs in groups; ``failed[i]`` marks runs to exclude (e.g. a sandbox error)."""
    cfg = config or AdvantageConfig()
    if len(group_ids) != len(rewards) or (failed is not None and len(failed) != len(rewards)):
        raise ValueError(f"group_ids, rewards and failed must have equal lengths, got {len(group_ids)}, "
                         f"{len(rewards)}, {len(failed) if failed is not None else '-'}")
    ok = [_valid(r) and not (failed and failed[i]) for i, r in enumerate(rewards)]
    members: dict[Hashable, list[int]] = {}
    for i, gid in enumerate(group_ids):
        members.setdefault(gid, []).append(i)
    values, keep = [0.0] * len(rewards), [False] * len(rewards)
    filtered = 0
    for idx in members.values():
        valid = [i for i in idx if ok[i]]
        rs = [float(rewards[i]) for i in valid]
        if len(rs) < 2 or max(rs) == min(rs):
            filtered += 1
            if not cfg.filter_equal:
                for i in valid:
                    keep[i] = True  # advantage 0: tokens count in the normaliser, no gradient
            continue
        mean = sum(rs) / len(rs)
        std = math.sqrt(sum((r - mean) ** 2 for r in rs) / len(rs))  # population std over the group
        for i, r in zip(valid, rs):
            values[i] = (r - mean) / (std + cfg.eps) if cfg.scale_by_std else r - mean
            keep[i] = True
    valid_rewards = [float(r) for r, o in zip(rewards, ok) if o]
    stats = {"reward_mean": sum(valid_rewards) / len(valid_rewards) if valid_rewards else float("nan"),
             "success_rate": (sum(r > 0 for r in valid_rewards) / len(valid_rewards)) if valid_rewards
             else float("nan")}
    return Advantages(values=values, keep=keep, groups=len(members), groups_filtered=filtered,
                      runs_failed=len(rewards) - sum(ok), stats=stats)


G = TypeVar("G")


def fill_batch(sample_groups: Callable[[int], list[G]], has_signal: Callable[[G], bool], target: int,
               *, max_rounds: int = 4, total: Callable[[int], int] | None = None) -> tuple[list[G], int]:
    """DAPO dynamic sampling: draw groups until ``target`` carry signal or ``max_rounds`` draws are spent.

    ``sample_groups(n)`` returns n new groups (e.g. runs G rollouts for n tasks). Returns the groups with signal
    (at most ``target``) and how many groups were drawn in total. With data-parallel ranks, ``total`` sums a
    count over the ranks (each rank's ``sample_groups`` then returns its share of the n groups): every rank
    decides on the same global count, so all draw the same number of times.
    """
    kept: list[G] = []
    drawn = 0
    for _ in range(max_rounds):
        need = target - (total(len(kept)) if total else len(kept))
        if need <= 0:
            break
        groups = sample_groups(need)
        drawn += len(groups)
        kept.extend(g for g in groups if has_signal(g))
    return kept[:target], drawn
