"""The learner on the real tiny MiniMax model: accumulation == big batch, every parameter moves, exact resume."""

from __future__ import annotations

import pytest
import torch
from lightswe.agent.checkpointing import load_checkpoint, save_checkpoint
from lightswe.agent.cispo import CISPOLoss, GRPOLoss
from lightswe.agent.learner import Learner, LearnerConfig, TrainBatch, sequence_logprobs
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM


def _model(seed=0):
    model = MiniMaxForCausalLM(MiniMaxConfig.preset("tiny"))
    model.init_weights(seed=seed)
    return model


def _batch(seed=0, n=6, max_len=24):
    g = torch.Generator().manual_seed(seed)
    tokens, masks, logps = [], [], []
    for i in range(n):
        length = int(torch.randint(8, max_len, (1,), generator=g))
        tokens.append(torch.randint(0, 256, (length,), generator=g).tolist())
        m = [0] * length
        for t in range(length // 2, length):  # policy tokens in the second half, some rows none
            m[t] = int(i != 2)
        masks.append(m)
        logps.append([(-float(torch.rand(1, generator=g)) * 6 if x else 0.0) for x in m])
    adv = torch.randn(n, generator=g).tolist()
    return TrainBatch.from_sequences(tokens, masks, logps, adv)


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("loss_cls", [CISPOLoss, GRPOLoss], ids=["cispo", "grpo"])
def test_micro_batching_equals_one_big_batch(loss_cls):
    results = []
    for micro in (6, 1, 4):
        model = _model()
        learner = Learner(model, loss_cls(), LearnerConfig(lr=1e-3, minibatches=1, micro_batch_size=micro,
                                                           grad_clip=0.0))
        metrics = learner.step(_batch())
        results.append((_params(model), metrics["loss"]))
    (ref, ref_loss), *others = results
    for params, loss in others:
        assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-7)
        for k in ref:
            torch.testing.assert_close(params[k], ref[k], rtol=1e-4, atol=1e-6, msg=k)


def test_one_step_changes_every_trainable_parameter_and_reports_metrics():
    model = _model()
    before = _params(model)
    learner = Learner(model, CISPOLoss(), LearnerConfig(lr=1e-3, minibatches=2, micro_batch_size=2))
    metrics = learner.step(_batch())
    after = _params(model)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    # experts that no token was routed to get no gradient; everything else must move
    assert all(".experts." in k for k in unchanged), unchanged
    assert learner.updates == 2 and metrics["optimizer_steps"] == 2
    for key in ("loss", "clip_fraction", "ratio_mean", "entropy", "logprob_mismatch_abs", "grad_norm"):
        assert key in metrics, key
    assert learner.optimizer.defaults["eps"] == 1e-15 and learner.optimizer.defaults["betas"] == (0.9, 0.95)


class RecordingCISPO(CISPOLoss):
    """CISPO that keeps, per call, logp - behaviour log-prob on the policy tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.log_ratios: list[torch.Tensor] = []

    def __call__(self, logp, behaviour_logp, advantages, weights, **kwargs):
        self.log_ratios.append((logp.detach() - behaviour_logp)[weights != 0])
        return super().__call__(logp, behaviour_logp, advantages, weights, **kwargs)


def test_recompute_behaviour_makes_first_update_on_policy():
    model = _model()
    learner = Learner(model, CISPOLoss(), LearnerConfig(minibatches=1, behaviour="recompute"))
    metrics = learner.step(_batch())
    assert metrics["ratio_mean"] == 1.0 and metrics["clip_fraction"] == 0


def test_recompute_uses_the_updates_micro_batches():
    """6 rows in 2 mini-batches of 3, micro-batches of 2 (rows 0-1, 2 | 3-4, 5): the recompute scores the same
    micro-batches, so every ratio of the first (on-policy) update is exactly 1."""
    model, loss = _model(), RecordingCISPO()
    Learner(model, loss, LearnerConfig(lr=1e-3, minibatches=2, micro_batch_size=2, behaviour="recompute")).step(
        _batch())
    assert len(loss.log_ratios) == 4
    first = torch.cat(loss.log_ratios[:2])
    assert first.numel() > 0 and torch.equal(first, torch.zeros_like(first))
    assert torch.cat(loss.log_ratios[2:]).abs().max() > 0  # after the first update: off-policy


def test_fp32_logprobs_aligned_with_tokens():
    model = _model()
    batch = _batch()
    logp, entropy = sequence_logprobs(model, batch.input_ids, with_entropy=True)
    assert logp.dtype == torch.float32 and logp.shape == batch.input_ids.shape and (logp[:, 0] == 0).all()
    assert entropy is not None and (entropy[:, 1:] > 0).all()


def test_learner_resume_reproduces_next_step_exactly(tmp_path):
    model = _model()
    learner = Learner(model, CISPOLoss(), LearnerConfig(lr=1e-3, minibatches=2, micro_batch_size=3))
    learner.step(_batch(seed=1))
    save_checkpoint(tmp_path, step=1, model=model, optimizer=learner.optimizer, state={"cursor": 6})
    learner.step(_batch(seed=2))
    expected = _params(model)

    model2 = _model(seed=99)
    learner2 = Learner(model2, CISPOLoss(), LearnerConfig(lr=1e-3, minibatches=2, micro_batch_size=3))
    assert load_checkpoint(tmp_path, model=model2, optimizer=learner2.optimizer)["cursor"] == 6
    learner2.step(_batch(seed=2))
    for k, v in _params(model2).items():
        assert torch.equal(v, expected[k]), k


def test_mismatched_rows_raise():
    with pytest.raises(ValueError, match="differ in length"):
        TrainBatch.from_sequences([[1, 2, 3]], [[0, 1]], [[0.0, -1.0, -1.0]], [1.0])


def test_minibatches_are_cut_at_group_boundaries():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        sizes = torch.randint(1, 9, (int(torch.randint(1, 7, (1,), generator=gen)),), generator=gen).tolist()
        ids = [g for g, size in enumerate(sizes) for _ in range(size)]
        batch = TrainBatch.from_sequences([[1, 2]] * len(ids), [[1, 1]] * len(ids), [[0.0, 0.0]] * len(ids),
                                          [0.0] * len(ids), group_ids=ids)
        for count in (1, 2, 3, 4):
            bounds = batch.minibatch_bounds(count)
            assert len(bounds) == count and bounds[0][0] == 0 and bounds[-1][1] == len(ids)
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            for start, end in bounds:  # no group has rows on both sides of a cut
                assert start in (0, len(ids)) or ids[start] != ids[start - 1]
    with pytest.raises(ValueError, match="contiguous"):
        TrainBatch.from_sequences([[1, 2]] * 3, [[1, 1]] * 3, [[0.0, 0.0]] * 3, [0.0] * 3, group_ids=["a", "b", "a"])


def test_a_whole_group_cancels_on_its_shared_tokens_and_a_split_one_does_not():
    """Eight identical samples with zero-sum advantages: kept whole, the update has no gradient; cut in two
    mini-batches (no group ids), each half pushes the shared tokens one way."""
    seq = torch.randint(1, 200, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    rows, advantages = [seq] * 8, [1.0] * 4 + [-1.0] * 4

    def grad_norm(group_ids):
        model = _model()
        cfg = LearnerConfig(lr=0.0, minibatches=2, micro_batch_size=8, grad_clip=1e9)
        batch = TrainBatch.from_sequences(rows, [[1] * 20] * 8, [[0.0] * 20] * 8, advantages, group_ids=group_ids)
        return Learner(model, CISPOLoss(), cfg).step(batch)["grad_norm"]

    assert grad_norm(["g"] * 8) < 1e-6
    assert grad_norm(None) > 1e-3
