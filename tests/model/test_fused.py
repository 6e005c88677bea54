"""The compiled elementwise chains (model/fused.py): eager everywhere but CUDA training, and on CUDA the
compiled decoder layer equals the eager one (forward and every gradient, bf16 autocast tolerance)."""

from __future__ import annotations

import pytest
import torch
from lightswe.model import MiniMaxConfig
from lightswe.model.fused import compile_enabled
from lightswe.model.layers import DecoderLayer

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
    torch.testing.assert_close(out1, out0, rtol=2e-2, atol=2e-2 * out0.abs().max().item())
    torch.testing.assert_close(gx1, gx0, rtol=2e-2, atol=2e-2 * gx0.abs().max().item())
    for name, g in g0.items():
        if g is not None:
            torch.testing.assert_close(g1[name], g, rtol=2e-2, atol=2e-2 * g.abs().max().item(), msg=name)
