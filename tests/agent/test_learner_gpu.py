"""The learner's CUDA fast path (grouped-GEMM MoE, bf16x3 head with Triton kernels, compiled elementwise chains,
fused AdamW) against its reference settings (per-expert loop, fp32 head, eager) on the same model and batch:
gradients of one CISPO micro-batch at bf16-autocast tolerance, and a whole ``Learner.step``."""

from __future__ import annotations

import pytest
import torch
from lightswe.agent.cispo import CISPOLoss
from lightswe.agent.learner import Learner, LearnerConfig, TrainBatch, sequence_logprobs
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
REFERENCE = {"LIGHTSWE_MOE_BACKEND": "loop", "LIGHTSWE_HEAD": "fp32", "LIGHTSWE_COMPILE": "0"}
FAST = {"LIGHTSWE_MOE_BACKEND": "auto", "LIGHTSWE_HEAD": "auto", "LIGHTSWE_COMPILE": "1"}


def model_and_batch():
    torch.manual_seed(0)
    model = MiniMaxForCausalLM(MiniMaxConfig.preset("tiny")).cuda()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (4, 96), generator=g)
    mask = torch.zeros(4, 96, dtype=torch.bool)
    mask[:, 48:] = True
    batch = TrainBatch(input_ids=ids, mask=mask, sampler_logp=-torch.rand(4, 96, generator=g) * 3 * mask,
                       advantages=torch.randn(4, generator=g)).to("cuda")
    return model, batch


def grads(model, batch, env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    model.zero_grad(set_to_none=True)
    loss = CISPOLoss()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logp, entropy = sequence_logprobs(model, batch.input_ids, with_entropy=True)
    out = loss(logp, batch.sampler_logp, batch.advantages, loss.token_weights(batch.mask), entropy=entropy)
    out.loss.backward()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fast_path_gradients_equal_the_reference(monkeypatch):
    model, batch = model_and_batch()
    logp_ref, ref = grads(model, batch, REFERENCE, monkeypatch)
    logp_fast, fast = grads(model, batch, FAST, monkeypatch)
    assert (logp_fast - logp_ref).abs().max() <= 2e-2  # bf16 products either way; the heads agree to ~1e-4
    assert set(fast) >= set(ref)  # the grouped path gives every expert a gradient (zeros where unused)
    for name, g in ref.items():
        scale = g.abs().max().item() + 1e-8
        assert (fast[name] - g).abs().max().item() <= 5e-2 * scale, name


def test_a_learner_step_on_the_fast_path_matches_the_reference(monkeypatch):
    results = []
    for env in (REFERENCE, FAST):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        model, batch = model_and_batch()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        learner = Learner(model, CISPOLoss(), LearnerConfig(lr=1e-3, minibatches=1, micro_batch_size=2,
                                                            autocast_dtype="bfloat16"))
        metrics = learner.step(batch)
        results.append((metrics, torch.cat([(p.detach() - before[n]).flatten()
                                            for n, p in model.named_parameters()])))
    (m_ref, step_ref), (m_fast, step_fast) = results
    assert m_fast["loss"] == pytest.approx(m_ref["loss"], rel=5e-2, abs=1e-3)
    assert m_fast["policy_tokens"] == m_ref["policy_tokens"]
    moved = step_ref != 0
    assert moved.float().mean() > 0.5  # AdamW's first step moves each element with a gradient by ~lr
    same_direction = (torch.sign(step_fast) == torch.sign(step_ref))[moved].float().mean().item()
    assert same_direction >= 0.9, same_direction  # only elements with near-zero gradients may flip


def test_recompute_behaviour_scores_as_the_update(monkeypatch):
    """``behaviour="recompute"`` on CUDA (compiled chains, bf16x3 head, grouped MoE, bf16 autocast): the
    behaviour log-probs are computed as the update's forward computes them (same micro-batches, autograd
    recording so the same compiled chains run), so every ratio of the first update is exactly 1. 4 rows in 2
    mini-batches, micro-batches of 3 rows (the old sequential recompute had other shapes: rows 0-2, 3)."""
    from .test_learner import RecordingCISPO

    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    model, batch = model_and_batch()
    loss = RecordingCISPO()
    Learner(model, loss, LearnerConfig(lr=1e-3, minibatches=2, micro_batch_size=3, behaviour="recompute",
                                       autocast_dtype="bfloat16")).step(batch)
    assert len(loss.log_ratios) == 2
    first = loss.log_ratios[0]
    assert first.numel() > 0 and torch.equal(first, torch.zeros_like(first))


def test_fused_clip_equals_clip_grad_norm(monkeypatch):
    """The gradient clip done by the fused AdamW kernel (``FUSED_CLIP``: grad_scale = norm / max norm) clips as
    ``clip_grad_norm_`` does: the same norm reported, the gradients left clipped to the same values (to the last
    bit or so: a division instead of a multiplication), their norm then ``grad_clip``; and unclipped when the
    norm is below it."""
    from lightswe.agent import learner as learner_module

    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    for clip in (1e-3, 1e6):  # clipping, not clipping
        results = []
        for flag in (False, True):
            monkeypatch.setattr(learner_module, "FUSED_CLIP", flag)
            model, batch = model_and_batch()
            learner = Learner(model, CISPOLoss(), LearnerConfig(lr=1e-3, minibatches=1, micro_batch_size=4,
                                                                grad_clip=clip, autocast_dtype="bfloat16"))
            metrics = learner.step(batch)
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results.append((metrics["grad_norm"], grads, torch.cat([p.detach().flatten()
                                                                    for p in model.parameters()])))
        (norm0, g0, w0), (norm1, g1, w1) = results
        assert norm1 == pytest.approx(norm0, rel=1e-4)
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-4 * g0.abs().max().item())
        if clip < norm0:
            assert g1.norm().item() == pytest.approx(clip, rel=1e-3)
        torch.testing.assert_close(w1, w0, rtol=1e-4, atol=1e-5)
