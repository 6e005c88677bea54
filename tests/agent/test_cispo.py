"""CISPO and its PPO-style variants against a direct transcription of the formulas."""

from __future__ import annotations

import pytest
import torch
from lightswe.agent.advantages import group_advantages
from lightswe.agent.cispo import LOSSES, CISPOLoss, DAPOLoss, GRPOLoss, LossConfig


def _batch(n=6, t=9, seed=0, empty_rows=()):
    g = torch.Generator().manual_seed(seed)
    behaviour = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    logp = (behaviour + torch.randn(n, t, generator=g, dtype=torch.float64) * 0.8).clamp(max=0)
    mask = torch.rand(n, t, generator=g) < 0.7
    for r in empty_rows:
        mask[r] = False
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    return logp.requires_grad_(), behaviour, mask, adv


def _paper_cispo(logp, behaviour, mask, adv, eps_high, eps_low=None):
    """The paper's objective written token by token with Python loops (no shared code with the module)."""
    n, t = logp.shape
    total = 0.0
    num = 0
    for i in range(n):
        for j in range(t):
            if not mask[i, j]:
                continue
            r = float(torch.exp(logp[i, j].detach() - behaviour[i, j]))
            r_hat = min(r, 1 + eps_high)
            if eps_low is not None:
                r_hat = max(r_hat, 1 - eps_low)
            total = total + r_hat * adv[i] * logp[i, j]
            num += 1
    return -total / max(num, 1)


@pytest.mark.parametrize("eps_low", [None, 0.2], ids=["no-lower-bound", "eps_low-0.2"])
@pytest.mark.parametrize("empty_rows", [(), (1, 4)], ids=["full", "empty-rows"])
def test_cispo_matches_paper_formula_and_gradient(eps_low, empty_rows):
    logp, behaviour, mask, adv = _batch(empty_rows=empty_rows)
    fn = CISPOLoss(LossConfig(eps_high=0.5, eps_low=eps_low))
    out = fn(logp, behaviour, adv, fn.token_weights(mask))
    (grad,) = torch.autograd.grad(out.loss, logp)
    logp_ref = logp.detach().clone().requires_grad_()
    ref = _paper_cispo(logp_ref, behaviour, mask, adv, 0.5, eps_low)
    (grad_ref,) = torch.autograd.grad(ref, logp_ref)
    torch.testing.assert_close(out.loss, ref.to(out.loss.dtype))
    torch.testing.assert_close(grad, grad_ref)
    assert grad[~mask].abs().max() == 0  # no gradient off the policy tokens
    assert out.num_tokens == int(mask.sum())


def test_empty_mask_gives_zero_loss_and_no_nan():
    logp, behaviour, mask, adv = _batch()
    mask[:] = False
    fn = CISPOLoss()
    out = fn(logp, behaviour, adv, fn.token_weights(mask))
    out.loss.backward()
    assert out.loss.item() == 0 and torch.isfinite(logp.grad).all() and logp.grad.abs().max() == 0
    assert out.metrics == {}


def test_all_equal_groups_contribute_nothing():
    rewards = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    adv = group_advantages(["a", "a", "a", "b", "b", "b"], rewards)
    assert adv.groups_filtered == 2 and not any(adv.keep) and adv.filtered_share == 1.0
    logp, behaviour, mask, _ = _batch()
    mask &= torch.tensor(adv.keep)[:, None]
    fn = CISPOLoss()
    out = fn(logp, behaviour, torch.tensor(adv.values, dtype=torch.float64), fn.token_weights(mask))
    out.loss.backward()
    assert out.loss.item() == 0 and logp.grad.abs().max() == 0


@pytest.mark.parametrize("loss_cls", [CISPOLoss, DAPOLoss, GRPOLoss], ids=["cispo", "dapo", "grpo"])
@pytest.mark.parametrize("splits", [[1, 5], [2, 2, 2], [3, 1, 2]], ids=["1+5", "2+2+2", "3+1+2"])
def test_micro_batches_sum_to_one_big_batch(loss_cls, splits):
    logp, behaviour, mask, adv = _batch(empty_rows=(2,))
    fn = loss_cls()
    weights = fn.token_weights(mask)  # decided once, before micro-batching
    big = fn(logp, behaviour, adv, weights)
    (grad_big,) = torch.autograd.grad(big.loss, logp)
    total, start = 0.0, 0
    for size in splits:
        rows = slice(start, start + size)
        total = total + fn(logp[rows], behaviour[rows], adv[rows], weights[rows]).loss
        start += size
    (grad_acc,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(total, big.loss)
    torch.testing.assert_close(grad_acc, grad_big)


def test_cispo_keeps_gradient_of_clipped_tokens_where_ppo_drops_it():
    # One sequence, positive advantage, tokens far above the clip range (ratio e^2 ~ 7.4).
    behaviour = torch.full((1, 4), -3.0, dtype=torch.float64)
    logp = torch.full((1, 4), -1.0, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 4, dtype=torch.bool)
    adv = torch.tensor([1.0], dtype=torch.float64)
    grads = {}
    for name, fn in {"cispo": CISPOLoss(LossConfig(eps_high=0.28)), "dapo": DAPOLoss(), "grpo": GRPOLoss(),
                     "cispo-masked": CISPOLoss(LossConfig(eps_high=0.28, token_mask=True))}.items():
        out = fn(logp, behaviour, adv, fn.token_weights(mask))
        (grads[name],) = torch.autograd.grad(out.loss, logp)
        assert out.metrics["clip_fraction"] == 1.0
    # CISPO: d(-w A logp / 4)/dlogp = -1.28/4 on every token; PPO variants: zero.
    torch.testing.assert_close(grads["cispo"], torch.full((1, 4), -1.28 / 4, dtype=torch.float64))
    assert grads["dapo"].abs().max() == 0 and grads["grpo"].abs().max() == 0
    assert grads["cispo-masked"].abs().max() == 0  # the paper's token mask recovers the trust region


def test_grpo_normalises_per_sequence_and_dapo_per_token():
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(DAPOLoss().token_weights(mask)[1, 0], torch.tensor(1 / 5))
    torch.testing.assert_close(GRPOLoss().token_weights(mask)[1, 0], torch.tensor(1 / 2))
    torch.testing.assert_close(GRPOLoss().token_weights(mask)[0, 0], torch.tensor(1 / 8))


def test_each_loss_keeps_its_own_clip_range_unless_one_is_set():
    """``lightswe train --loss grpo`` builds the loss from the run's one LossConfig: an unset bound must give
    each loss its published range, not CISPO's."""
    bounds = {name: LOSSES[name](LossConfig()).clip_bounds() for name in LOSSES}
    assert bounds == {"cispo": (0.0, 3.0), "dapo": (0.8, 1.28), "grpo": (0.8, 1.2)}
    assert GRPOLoss(LossConfig(eps_high=0.5, eps_low=0.1)).clip_bounds() == (0.9, 1.5)


def test_on_policy_ratio_is_one_and_metrics_report_mismatch():
    logp, _, mask, adv = _batch()
    sampler = logp.detach() + 0.1
    fn = CISPOLoss()
    out = fn(logp, logp.detach(), adv, fn.token_weights(mask), sampler_logp=sampler)
    assert out.metrics["ratio_mean"] == pytest.approx(1.0) and out.metrics["clip_fraction"] == 0
    assert out.metrics["logprob_mismatch_abs"] == pytest.approx(0.1)
    assert out.metrics["entropy"] > 0


def test_bad_shapes_and_settings_raise():
    with pytest.raises(ValueError, match="eps_high"):
        CISPOLoss(LossConfig(eps_high=0))
    logp, behaviour, mask, adv = _batch()
    fn = CISPOLoss()
    with pytest.raises(ValueError, match="advantages"):
        fn(logp, behaviour, adv[:2], fn.token_weights(mask))


def test_sft_loss_is_mean_token_nll():
    from lightswe.agent.cispo import SFTLoss

    logp, _, mask, _ = _batch()
    fn = SFTLoss()
    out = fn(logp, logp.detach(), torch.ones(logp.shape[0], dtype=torch.float64), fn.token_weights(mask))
    torch.testing.assert_close(out.loss, -(logp[mask]).mean())
