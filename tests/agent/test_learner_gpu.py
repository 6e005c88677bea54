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


def _optimizer_state(learner: Learner) -> list[torch.Tensor]:
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t  # noqa: E731 (FSDP2's DTensors)
    return [full(t).detach().clone() for state in learner.optimizer.state.values() for t in state.values()]


def test_a_non_finite_update_is_skipped_on_the_device_and_refused(monkeypatch):
    """The fused CUDA AdamW path: after a good step, a NaN weight makes the next step's log-probs NaN; the update
    is skipped by the optimiser's kernel (``found_inf``: no host read before the step) and the step raises
    NonFiniteError after it: every weight, moment and step count as before, ``updates`` unchanged. With the
    weight restored the next step updates again (the skip flag does not stick)."""
    from lightswe.errors import NonFiniteError

    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    model, batch = model_and_batch()
    learner = Learner(model, CISPOLoss(), LearnerConfig(lr=1e-3, minibatches=1, micro_batch_size=2, grad_clip=1.0,
                                                        autocast_dtype="bfloat16"))
    assert learner.optimizer.defaults.get("fused")
    learner.step(batch)
    weight = model.lm_head.weight
    good = weight.detach().clone()
    with torch.no_grad():
        weight[:8] = torch.nan
    params = [p.detach().clone() for p in model.parameters()]
    state = _optimizer_state(learner)
    with pytest.raises(NonFiniteError, match="update was not applied"):
        learner.step(batch)
    assert learner.updates == 1 and learner.optimizer.found_inf is not None
    for before, p in zip(params, model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), before, rtol=0, atol=0, equal_nan=True)
    for before, t in zip(state, _optimizer_state(learner), strict=True):
        torch.testing.assert_close(t, before, rtol=0, atol=0)
    with torch.no_grad():
        weight.copy_(good)
    learner.step(batch)
    assert learner.updates == 2 and not torch.equal(model.lm_head.weight, good)


FSDP_NON_FINITE = '''
import sys
import torch
from lightswe.agent.cispo import CISPOLoss
from lightswe.agent.distributed import DistContext
from lightswe.agent.learner import Learner, LearnerConfig, TrainBatch, shard_model
from lightswe.errors import NonFiniteError
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

with DistContext.from_env("cuda") as ctx:
    torch.manual_seed(0)
    model = shard_model(MiniMaxForCausalLM(MiniMaxConfig.preset("tiny")).cuda())
    learner = Learner(model, CISPOLoss(), LearnerConfig(lr=1e-3, minibatches=1, micro_batch_size=2, grad_clip=1.0,
                                                        autocast_dtype="bfloat16"))
    assert learner.optimizer.defaults.get("fused")
    g = torch.Generator().manual_seed(ctx.rank)
    ids = torch.randint(0, 256, (2, 64), generator=g)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, 32:] = True
    logp = -torch.rand(2, 64, generator=g) * mask
    batch = TrainBatch(input_ids=ids, mask=mask, sampler_logp=logp, advantages=torch.tensor([1.0, -1.0]))
    learner.step(batch)
    full = lambda t: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()
    params = [full(p) for p in model.parameters()]
    state = [full(t) for s in learner.optimizer.state.values() for t in s.values()]
    if ctx.rank == 1:  # one rank's behaviour log-prob of a policy token is NaN: every rank must skip and raise
        logp = logp.clone()
        logp[0, 40] = float("nan")
    bad = TrainBatch(input_ids=ids, mask=mask, sampler_logp=logp, advantages=torch.tensor([1.0, -1.0]))
    try:
        learner.step(bad)
        raised = False
    except NonFiniteError:
        raised = True
    same = all(torch.equal(a, full(p)) for a, p in zip(params, model.parameters()))
    same_state = all(torch.equal(a, full(t)) for a, t in zip(state, (t for s in learner.optimizer.state.values()
                                                                      for t in s.values())))
    learner.step(batch)  # the flag does not stick
    moved = not all(torch.equal(a, full(p)) for a, p in zip(params, model.parameters()))
    print(f"rank {ctx.rank}: raised={raised} same={same} same_state={same_state} moved={moved}", flush=True)
    assert raised and same and same_state and moved
'''


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_fsdp2_on_two_gpus_every_rank_skips_a_non_finite_update(tmp_path):
    """FSDP2 over NCCL on two GPUs, the fused AdamW over DTensor shards: one rank's non-finite behaviour log-prob
    makes BOTH ranks skip the update on the device (the verdict all-reduced) and raise after it, weights and
    optimiser state unchanged on every rank; the next good step updates."""
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(FSDP_NON_FINITE)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("raised=True same=True same_state=True moved=True") == 2, run.stdout
