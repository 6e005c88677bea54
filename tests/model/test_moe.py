"""The grouped-GEMM MoE (model/moe.py) against the per-expert reference loop: outputs, load-balancing loss and
every gradient, including experts that get no token; CPU (``torch._grouped_mm``'s fallback, fp32) and CUDA (bf16
autocast, the sm90 CUTLASS kernels)."""

from __future__ import annotations

import pytest
import torch
from lightswe.model import MiniMaxConfig
from lightswe.model.layers import SparseMoE
from lightswe.model.moe import use_grouped

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def run(moe: SparseMoE, x: torch.Tensor, backend: str, monkeypatch, grad: torch.Tensor | None = None,
        autocast: bool = False):
    monkeypatch.setenv("LIGHTSWE_MOE_BACKEND", backend)
    moe.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out, aux = moe(x)
    grad = torch.randn_like(out, generator=torch.Generator(x.device).manual_seed(1)) if grad is None else grad
    ((out * grad).sum() + aux).backward()
    return out.detach(), aux.detach(), x.grad, {n: p.grad for n, p in moe.named_parameters()}


def make(config: MiniMaxConfig, device: str = "cpu", dead_expert: bool = False) -> SparseMoE:
    torch.manual_seed(0)
    moe = SparseMoE(config).to(device)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    if dead_expert:  # expert 0's router row so negative that it never wins: its group is empty
        with torch.no_grad():
            moe.gate.weight[0] = -10.0 * moe.gate.weight[0].abs().sign().clamp(min=1)
    return moe


@pytest.mark.parametrize("tokens", [1, 17, 50])
@pytest.mark.parametrize("dead_expert", [False, True], ids=["all-used", "empty-expert"])
def test_grouped_equals_the_loop_with_every_gradient(tiny_config, tokens, dead_expert, monkeypatch):
    moe = make(tiny_config, dead_expert=dead_expert)
    x = torch.randn(tokens, tiny_config.hidden_size)
    ref = run(moe, x, "loop", monkeypatch)
    got = run(moe, x, "grouped", monkeypatch)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1])
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-5)
    for name, g in ref[3].items():
        if g is None:  # the loop leaves an unused expert without a gradient; the grouped path gives zeros
            assert not got[3][name].any(), name
        else:
            torch.testing.assert_close(got[3][name], g, rtol=1e-5, atol=1e-5, msg=name)
    assert all(g is not None for g in got[3].values())  # every expert is in the graph (FSDP needs that)


def test_backend_choice_keeps_cpu_on_the_loop(monkeypatch):
    w = torch.zeros(2, 2)
    monkeypatch.delenv("LIGHTSWE_MOE_BACKEND", raising=False)
    assert not use_grouped(torch.zeros(2, 2), w)  # CPU fp32: the reference loop, numerics unchanged
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_grouped(torch.zeros(2, 2), w)  # auto is grouped on CUDA only
    monkeypatch.setenv("LIGHTSWE_MOE_BACKEND", "grouped")
    assert use_grouped(torch.zeros(2, 2), w)
    monkeypatch.setenv("LIGHTSWE_MOE_BACKEND", "fast")
    with pytest.raises(ValueError, match="LIGHTSWE_MOE_BACKEND='fast'; expected one of auto, grouped, loop"):
        use_grouped(torch.zeros(2, 2), w)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dead_expert", [False, True], ids=["all-used", "empty-expert"])
def test_cuda_grouped_gemm_equals_the_loop_under_bf16_autocast(dead_expert, monkeypatch):
    """minimax-1b's MoE shape (32 experts, H 1024, I 1536) on 4,099 tokens (not a multiple of the alignment)."""
    config = MiniMaxConfig.preset("minimax-1b")
    moe = make(config, "cuda", dead_expert)
    with torch.no_grad():
        for p in moe.parameters():
            p.mul_(0.1)
    x = torch.randn(4099, config.hidden_size, device="cuda")
    monkeypatch.delenv("LIGHTSWE_MOE_BACKEND", raising=False)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert use_grouped(x, moe.experts[0].w1.weight)  # auto picks it here
    ref = run(moe, x, "loop", monkeypatch, autocast=True)
    got = run(moe, x, "grouped", monkeypatch, autocast=True)
    scale = ref[0].abs().max()
    torch.testing.assert_close(got[0], ref[0], rtol=2e-2, atol=2e-2 * scale)  # bf16 products either way
    torch.testing.assert_close(got[1], ref[1])
    torch.testing.assert_close(got[2], ref[2], rtol=2e-2, atol=2e-2 * ref[2].abs().max())
    for name, g in ref[3].items():
        if g is not None:
            torch.testing.assert_close(got[3][name], g, rtol=2e-2, atol=2e-2 * g.abs().max(), msg=name)
