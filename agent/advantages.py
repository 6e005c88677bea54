"""Group-relative advantages: A_i = (R_i - mean_group R) / (std_group R + eps) (MiniMax-M1 / GRPO), std the
population std (ddof 0) of the group's valid rewards; ``scale_by_std=False``: R_i - mean_group R (Dr. GRPO).

Rules that keep the signal honest:
- a failed run (sandbox error, NaN/None reward) is *excluded*, never scored 0: an infrastructure failure is not
  evidence that the policy was wrong;
- a group whose valid rewards are all equal carries no signal (every advantage is 0) and is filtered
  (``filter_equal``; otherwise its runs stay with advantage 0: no gradient, but tokens in the normaliser);
- a group with one valid run gets advantage 0 (and is filtered as "equal").

``fill_batch`` is the DAPO dynamic-sampling hook: it keeps drawing groups until enough carry signal;
``overlong_penalty`` is DAPO's soft overlong punishment (a length penalty added to the reward; off by default).

Example::

    adv = group_advantages(["a", "a", "b", "b"], [1.0, 0.0, 1.0, 1.0])
    adv.values  -> [1.0, -1.0, 0.0, 0.0];  adv.keep -> [True, True, False, False]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from lightswe.errors import UserInputError


@dataclass(kw_only=True, slots=True)
class AdvantageConfig:
    eps: float = 1e-6  # added to the group's reward std before dividing
    scale_by_std: bool = True  # False: Dr. GRPO's mean-centred rewards only
    filter_equal: bool = True  # drop groups whose valid rewards are all equal


@dataclass(kw_only=True, slots=True)
class OverlongConfig:
    """DAPO's soft overlong punishment (``overlong_penalty``): off unless ``buffer_tokens`` > 0."""

    # L_cache: the punishment interval, the last this many tokens before max_tokens (0: off).
    buffer_tokens: int = 0
    # L_max: the episode's generation budget in policy tokens (default: the most an episode can generate,
    # min(--agent.max-context-tokens, --agent.max-steps x --agent.max-new-tokens)).
    max_tokens: int | None = None
    # Scale of the penalty (DAPO: 1, a penalty of at most -1 next to a 0/1 reward; verl's penalty_factor).
    factor: float = 1.0


def overlong_penalty(length: int, *, max_tokens: int, buffer_tokens: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", arXiv 2503.14476, section 3.4, eq. 13), added to
    the reward of a graded run whose response holds ``length`` tokens (here: the policy's generated tokens of the
    episode), with L_max = ``max_tokens`` and L_cache = ``buffer_tokens``::

        R_length(y) = 0                                     if |y| <= L_max - L_cache
                    = factor ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
                    = -factor                               if |y| > L_max

    a penalty growing linearly from 0 to -``factor`` over the last L_cache tokens of the budget. ``buffer_tokens``
    0 turns it off (0.0 for every length). Floats; raises ValueError for buffer_tokens < 0 or > max_tokens.
    """
    if buffer_tokens < 0 or buffer_tokens > max_tokens:
        raise UserInputError(f"need 0 <= buffer_tokens <= max_tokens, got {buffer_tokens}, {max_tokens}")
    if buffer_tokens == 0:
        return 0.0
    expected = max_tokens - buffer_tokens
    if length <= expected:
        return 0.0
    if length <= max_tokens:
        return factor * (expected - length) / buffer_tokens
    return -factor


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
        raise UserInputError(f"group_ids, rewards and failed must have equal lengths, got {len(group_ids)}, "
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
