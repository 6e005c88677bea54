"""The compiled elementwise chains (model/fused.py): eager everywhere but CUDA training, on CUDA the compiled
RMSNorms equal the eager ones bit for bit (fp64 mean square), and the compiled decoder layer equals the eager
one (forward bit for bit, every gradient at bf16 autocast tolerance)."""

from __future__ import annotations

import pytest
import torch
from lightswe.model import MiniMaxConfig
from lightswe.model import fused
from lightswe.model.fused import compile_enabled
from lightswe.model.layers import DecoderLayer

from .conftest import random_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_compile_is_off_on_cpu_and_without_autograd(monkeypatch):
    monkeypatch.delenv("LIGHTSWE_COMPILE", raising=False)
    assert not compile_enabled(torch.zeros(2))  # CPU: the eager code, numerics unchanged
    if torch.cuda.is_available():
        x = torch.zeros(2, device="cuda")
        assert compile_enabled(x)
        with torch.no_grad():
            assert not compile_enabled(x)  # sampling stays eager
        monkeypatch.setenv("LIGHTSWE_COMPILE", "0")
        assert not compile_enabled(x)


def test_cpu_norm_keeps_the_fp32_reduction():
    """The CPU (the main job's learner) computes RMSNorm as before: fp32 mean square, bit for bit."""
    torch.manual_seed(0)
    x, w = torch.randn(5, 300) * 3, torch.rand(300) + 0.5
    xf = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert torch.equal(fused.rms_norm(x, w, 1e-5), w * xf)


@pytest.mark.gpu
@cuda
def test_compiled_norms_equal_eager_bit_for_bit():
    """On CUDA the learner's compiled RMSNorm (autograd recording), the sampler's (compiled inside its decode
    step, 8 rows, no grad) and eager CUDA agree in every bit: the fp64 mean square makes the fp32 scale
    independent of the reduction order (with the fp32 one, 11% of the elements differed; H200, 2026-11-30)."""
    torch.manual_seed(0)
    for shape in ((4096, 768), (2, 1000, 1024)):
        x = torch.randn(*shape, device="cuda") * 3
        w = torch.rand(shape[-1], device="cuda") + 0.5
        gate = torch.randn(*shape, device="cuda").bfloat16()
        eager = fused.rms_norm.__wrapped__(x, w, 1e-5)
        assert torch.equal(fused.rms_norm(x.clone().requires_grad_(), w, 1e-5).detach(), eager)
        gated = fused.gated_rms_norm.__wrapped__(gate, x, w, 1e-6, torch.float32)
        assert torch.equal(fused.gated_rms_norm(gate, x.clone().requires_grad_(), w, 1e-6, torch.float32).detach(),
                           gated)
        region = torch.compile(lambda a, b: fused.rms_norm.__wrapped__(a, b, 1e-5),
                               options={"emulate_precision_casts": True})
        rows = x.reshape(-1, shape[-1])[:8]
        with torch.no_grad():
            assert torch.equal(region(rows[:, None], w)[:, 0], eager.reshape(-1, shape[-1])[:8])


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("layer_idx", [0, 7], ids=["lightning", "softmax"])
def test_compiled_layer_equals_eager_on_cuda(layer_idx, monkeypatch):
    config = MiniMaxConfig.preset("small")
    torch.manual_seed(0)
    layer = DecoderLayer(config, layer_idx).cuda()
    for name, p in layer.named_parameters():
        torch.nn.init.normal_(p, mean=1.0 if name.endswith("norm.weight") else 0.0, std=0.05)
    x = torch.randn(2, 512, config.hidden_size, device="cuda")
    positions = torch.arange(512, device="cuda").expand(2, 512)
    grad = torch.randn_like(x)
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("LIGHTSWE_COMPILE", flag)
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, aux = layer(xi, positions)
        ((out * grad).sum() + aux).backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in layer.named_parameters()}))
    (out0, gx0, g0), (out1, gx1, g1) = results
    assert torch.equal(out1, out0)  # the chains compute what eager computes (order-independent norms, no FMA)
    torch.testing.assert_close(gx1, gx0, rtol=2e-2, atol=2e-2 * gx0.abs().max().item())
    for name, g in g0.items():
        if g is not None:
            torch.testing.assert_close(g1[name], g, rtol=2e-2, atol=2e-2 * g.abs().max().item(), msg=name)


@pytest.mark.parametrize("layer_idx", [0, 3], ids=["lightning", "softmax"])
def test_cast_once_layer_equals_the_plain_layer_under_autocast(layer_idx, monkeypatch):
    """``DecoderLayer._forward_cast_once`` (the compiled CUDA path's layer under autocast: the norms hand the
    projections one bf16 copy) against ``forward``'s autocast casts, run here on CPU under bf16 autocast with the
    grouped MoE: the same output bit for bit, gradients at bf16 tolerance (its bf16 copy's gradients are summed
    in bf16)."""
    monkeypatch.setenv("LIGHTSWE_MOE_BACKEND", "grouped")
    config = MiniMaxConfig.preset("tiny")
    layer = random_model(config).model.layers[layer_idx]
    torch.manual_seed(0)
    x = torch.randn(2, 40, config.hidden_size)
    positions = torch.arange(40).expand(2, 40)
    grad = torch.randn_like(x)
    results = []
    for fn in (layer.forward, layer._forward_cast_once):
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, aux = fn(xi, positions, None, None)
        assert out.dtype == torch.float32
        ((out * grad).sum() + aux).backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}))
    (out0, gx0, g0), (out1, gx1, g1) = results
    assert torch.equal(out1, out0)
    torch.testing.assert_close(gx1, gx0, rtol=2e-2, atol=2e-2 * gx0.abs().max().item())
    assert set(g1) == set(g0)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=2e-2, atol=2e-2 * g.abs().max().item(), msg=name)


@pytest.mark.gpu
@cuda
def test_compiled_silu_split_equals_eager(monkeypatch):
    """The lightning layer's q, k, v (``silu_split``): compiled, three contiguous tensors with eager's values bit
    for bit and the projection's gradient at bf16 rounding; eager (and on CPU), views of silu(x) as before."""
    monkeypatch.delenv("LIGHTSWE_COMPILE", raising=False)
    torch.manual_seed(0)
    x = (torch.randn(2, 300, 8, 3 * 128, device="cuda") * 3).bfloat16()
    grads = [torch.randn(2, 300, 8, 128, device="cuda").bfloat16() for _ in range(3)]
    outs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("LIGHTSWE_COMPILE", flag)
        xi = x.clone().requires_grad_()
        parts = fused.silu_split(xi, 128)
        assert [p.is_contiguous() for p in parts] == [flag == "1"] * 3
        torch.autograd.backward(parts, grads)
        outs.append(([p.detach() for p in parts], xi.grad))
    for a, b in zip(outs[0][0], outs[1][0]):
        assert torch.equal(a, b)
    torch.testing.assert_close(outs[1][1].float(), outs[0][1].float(), rtol=1e-2, atol=1e-2)
    cpu = x.cpu().float()
    assert all(not p.is_contiguous() for p in fused.silu_split(cpu.requires_grad_(), 128))  # views on CPU
