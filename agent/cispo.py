"""Policy-gradient losses for the learner: CISPO (MiniMax-M1, section 3.1) and, for comparison, DAPO and GRPO.

CISPO clips the importance-sampling *weight* instead of the update: every generated token keeps its gradient,
which flows only through the new log-prob::

    r_t   = exp(logp_new_t - logp_behaviour_t)
    w_t   = sg(clip(r_t, 1 - eps_low, 1 + eps_high))          # eps_low=None: no lower bound (the paper)
    loss  = - sum_it  mask_it * w_t * A_i * logp_new_t / sum_it mask_it

PPO-style losses (DAPO, GRPO) put the ratio inside ``min(r A, clip(r) A)``, so a token whose ratio is clipped
gets no gradient. The paper's general form multiplies by a token mask ``M_t`` that drops tokens the trust
region would drop (``A > 0 and r > 1 + eps_high`` or ``A < 0 and r < 1 - eps_low``); ``token_mask=True``
turns that on.

Normalisation is decided on the whole batch, before micro-batching: ``token_weights(mask)`` returns the
weight of each token in the batch loss (CISPO and DAPO: 1 / all policy tokens; GRPO: 1 / (tokens of its
sequence * sequences)), and a micro-batch's loss is a plain weighted sum. Summing micro-batch losses
therefore gives exactly the loss and gradient of one big batch. No KL term.

Example::

    loss_fn = CISPOLoss(LossConfig(eps_high=2.0))
    weights = loss_fn.token_weights(mask)                         # whole batch
    out = loss_fn(new_logprobs, behaviour_logprobs, advantages, weights)  # any slice of rows
    out.loss.backward(); print(out.metrics["clip_fraction"])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightswe.agent.learner_config import LossConfig  # torch-free, for the CLI; re-exported here
from torch import Tensor
from lightswe.errors import UserInputError


class LossOutput:
    """A slice's loss and its metrics.

    ``loss``: scalar tensor, this slice's share of the whole-batch loss. ``metrics``: means over the slice's
    policy tokens (floats); ``num_tokens``: its policy tokens (the weight for averaging metrics across slices).
    Both are read from the loss's device on first access (``read``, a host sync on CUDA), not when the loss is
    built: a learner that reads them after its backward passes and optimiser step has queued every kernel of
    the step without waiting for the GPU (the values are the same whenever they are read)."""

    __slots__ = ("loss", "_metrics", "_num_tokens", "_read")

    def __init__(self, *, loss: Tensor, metrics: dict[str, float] | None = None, num_tokens: int = 0,
                 read: Callable[[], tuple[dict[str, float], int]] | None = None) -> None:
        self.loss = loss
        self._metrics, self._num_tokens, self._read = metrics or {}, num_tokens, read

    def _resolve(self) -> None:
        if self._read is not None:
            self._metrics, self._num_tokens = self._read()
            self._read = None

    @property
    def metrics(self) -> dict[str, float]:
        self._resolve()
        return self._metrics

    @property
    def num_tokens(self) -> int:
        self._resolve()
        return self._num_tokens


class PolicyLoss:
    """Base: shared clipping, normalisation and metrics; subclasses define the per-token objective."""

    default_eps_high: float = 2.0
    default_eps_low: float | None = None

    def __init__(self, config: LossConfig | None = None) -> None:
        self.config = config or LossConfig()
        if self.eps_high <= 0:
            raise UserInputError(f"eps_high must be > 0, got {self.eps_high}")
        eps_low = self.eps_low
        if eps_low is not None and not 0 <= eps_low < 1:
            raise UserInputError(f"eps_low must be in [0, 1) or None, got {eps_low}")

    @property
    def eps_high(self) -> float:
        return self.config.eps_high if self.config.eps_high is not None else self.default_eps_high

    @property
    def eps_low(self) -> float | None:
        return self.config.eps_low if self.config.eps_low is not None else self.default_eps_low

    def clip_bounds(self) -> tuple[float, float]:
        low = 1.0 - self.eps_low if self.eps_low is not None else 0.0
        return low, 1.0 + self.eps_high

    def token_weights(self, mask: Tensor, reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Weight of each token in the batch loss: token-level, 1 / (policy tokens in the whole batch).

        ``reduce`` sums the denominator across data-parallel ranks (the batch is then all ranks' rows)."""
        mask = mask.float()
        den = mask.sum()
        return mask / (reduce(den) if reduce else den).clamp_min(1.0)

    def objective(self, logp: Tensor, ratio: Tensor, adv: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token objective to maximise and the boolean 'clipped' mask (clipped = gets no IS-weight change)."""
        raise NotImplementedError

    def __call__(self, logp: Tensor, behaviour_logp: Tensor, advantages: Tensor, weights: Tensor,
                 *, sampler_logp: Tensor | None = None, entropy: Tensor | None = None) -> LossOutput:
        """Loss of a slice of rows.

        logp: [N, T] fp32 log-probs of the taken tokens under the current weights (requires grad).
        behaviour_logp: [N, T] log-probs the ratio is taken against (sampler's or learner's pre-update ones).
        advantages: [N] one advantage per sequence. weights: [N, T] from ``token_weights`` of the whole batch
        (zero off the policy tokens). sampler_logp, entropy: optional [N, T], only for metrics.
        """
        if logp.shape != behaviour_logp.shape or logp.shape != weights.shape:
            raise UserInputError(f"logp, behaviour_logp and weights must share a shape [N, T], got "
                             f"{tuple(logp.shape)}, {tuple(behaviour_logp.shape)}, {tuple(weights.shape)}")
        if advantages.shape != logp.shape[:1]:
            raise UserInputError(f"advantages must be [N]={tuple(logp.shape[:1])}, got {tuple(advantages.shape)}")
        mask = weights != 0
        log_ratio = (logp - behaviour_logp.detach()).masked_fill(~mask, 0.0)
        ratio = torch.exp(log_ratio)
        adv = advantages.detach().to(logp.dtype)[:, None].expand_as(logp)
        obj, clipped = self.objective(logp, ratio, adv)
        loss = -(obj * weights).masked_fill(~mask, 0.0).sum()
        logp, ratio = logp.detach(), ratio.detach()  # the metrics keep values, not the autograd graph
        entropy = entropy.detach() if entropy is not None else None
        return LossOutput(loss=loss, read=lambda: self._metrics(logp, ratio, clipped, mask, sampler_logp, entropy))

    @torch.no_grad()
    def _metrics(self, logp: Tensor, ratio: Tensor, clipped: Tensor, mask: Tensor,
                 sampler_logp: Tensor | None, entropy: Tensor | None) -> tuple[dict[str, float], int]:
        """(metrics, policy tokens), read from the device with two host syncs (the policy tokens' positions,
        then every value at once) instead of one per value: ``pick(t)`` is ``t[mask]`` (the same elements in
        the same order, so the same floats), the boolean index's own sync done once."""
        index = mask.flatten().nonzero().squeeze(1)
        n = index.numel()
        if n == 0:
            return {}, 0

        def pick(t: Tensor) -> Tensor:
            return t.flatten().index_select(0, index)

        r = pick(ratio)
        # -log p of the taken tokens: an estimate of the policy entropy when no exact one is given
        values = {"clip_fraction": pick(clipped).float().mean(), "ratio_mean": r.mean(), "ratio_min": r.min(),
                  "ratio_max": r.max(), "entropy": pick(entropy).mean() if entropy is not None else -pick(logp).mean()}
        if sampler_logp is not None:
            taken, sampled = pick(logp), pick(sampler_logp)
            values["logprob_mismatch_abs"] = (taken - sampled).abs().mean()  # train vs sampler, same weights at step 0
            if n > 1:
                values["prob_corr"] = torch.corrcoef(torch.stack([taken.exp(), sampled.exp()]))[0, 1]
        return dict(zip(values, torch.stack(list(values.values())).tolist())), n


class CISPOLoss(PolicyLoss):
    """CISPO: sg(clipped IS weight) * A * logp; clipped tokens keep their gradient."""

    def objective(self, logp: Tensor, ratio: Tensor, adv: Tensor) -> tuple[Tensor, Tensor]:
        low, high = self.clip_bounds()
        weight = ratio.clamp(low, high).detach()
        clipped = (ratio > high) | (ratio < low)
        obj = weight * adv * logp
        if self.config.token_mask:  # the paper's M_t: drop what the PPO trust region would drop
            low_bound = low if self.eps_low is not None else float("-inf")
            drop = ((adv > 0) & (ratio > high)) | ((adv < 0) & (ratio < low_bound))
            obj = obj.masked_fill(drop, 0.0)
        return obj, clipped


class DAPOLoss(PolicyLoss):
    """DAPO: PPO clipped surrogate with clip-higher (0.2 / 0.28) and token-level normalisation.

    ``min(r A, clip(r) A)``: a token on the clipped side of the min has zero gradient.
    """

    default_eps_high = 0.28
    default_eps_low = 0.2

    def objective(self, logp: Tensor, ratio: Tensor, adv: Tensor) -> tuple[Tensor, Tensor]:
        low, high = self.clip_bounds()
        unclipped, clipped_obj = ratio * adv, ratio.clamp(low, high) * adv
        obj = torch.minimum(unclipped, clipped_obj)
        dropped = clipped_obj < unclipped  # the min picked the constant branch: no gradient
        return obj, dropped


class GRPOLoss(DAPOLoss):
    """GRPO (without KL): PPO surrogate, symmetric clip 0.2, each sequence's mean then the mean over sequences."""

    default_eps_high = 0.2

    def token_weights(self, mask: Tensor, reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        mask = mask.float()
        per_seq = mask.sum(dim=1, keepdim=True)
        n_seq = (per_seq > 0).sum().float()
        return mask / per_seq.clamp_min(1.0) / (reduce(n_seq) if reduce else n_seq).clamp_min(1.0)


class SFTLoss(PolicyLoss):
    """Behaviour cloning (the warm start): mean negative log-likelihood of the policy tokens; advantages 1."""

    def objective(self, logp: Tensor, ratio: Tensor, adv: Tensor) -> tuple[Tensor, Tensor]:
        return adv * logp, torch.zeros_like(logp, dtype=torch.bool)


LOSSES: dict[str, type[PolicyLoss]] = {"cispo": CISPOLoss, "dapo": DAPOLoss, "grpo": GRPOLoss}
