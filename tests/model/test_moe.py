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
    moe, x = minimax_1b_moe_on_cuda(dead_expert)
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


def minimax_1b_moe_on_cuda(dead_expert: bool = False) -> tuple[SparseMoE, torch.Tensor]:
    """minimax-1b's MoE layer (weights scaled by 0.1) and 4,099 input tokens (not a multiple of the alignment)."""
    config = MiniMaxConfig.preset("minimax-1b")
    moe = make(config, "cuda", dead_expert)
    with torch.no_grad():
        for p in moe.parameters():
            p.mul_(0.1)
    return moe, torch.randn(4099, config.hidden_size, device="cuda")


def _swiglu_reference(h13: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager autograd of silu(gate) * up (the chain the Triton backward replaces): (y, dh13)."""
    h = h13.detach().clone().requires_grad_()
    gate, up = h.chunk(2, dim=-1)
    y = torch.nn.functional.silu(gate) * up
    y.backward(dy)
    return y.detach(), h.grad


SWIGLU_CHECK = """
import torch
from lightswe.model.moe_kernels import swiglu_backward


def reference(h13, dy):
    h = h13.detach().clone().requires_grad_()
    gate, up = h.chunk(2, dim=-1)
    (torch.nn.functional.silu(gate) * up).backward(dy)
    return h.grad


torch.manual_seed(0)
for rows, inner in ((1000, 1536), (37, 200)):  # minimax-1b's I; a ragged tail in both dims
    h13 = (torch.randn(rows, 2 * inner, device=DEVICE) * 3).bfloat16()
    dy = torch.randn(rows, inner, device=DEVICE).bfloat16()
    ref = reference(h13, dy)
    got = swiglu_backward(h13, dy)
    assert got.dtype == torch.bfloat16 and got.shape == h13.shape
    # the same formulas and roundings as eager (exp / division may differ in fp32's last bit before a rounding;
    # Triton's interpreter truncates fp32 -> bf16 instead of rounding: up to 2 bf16 ulps there)
    torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=1e-2)
    assert (got == ref).float().mean().item() >= MIN_EQUAL, (got == ref).float().mean().item()
try:
    swiglu_backward(h13, dy[:, :-1])
    raise AssertionError("no error")
except ValueError as err:
    assert "expected h13" in str(err)
print("ok")
"""


@pytest.mark.gpu
@cuda
def test_swiglu_triton_backward_equals_eager_autograd(monkeypatch):
    """The experts' SwiGLU backward kernel (model/moe_kernels.py) against eager autograd, alone and inside the
    grouped MoE: the forward is the compiled chain's (bit for bit) and the gradient agrees at bf16 rounding."""
    from lightswe.model import moe as moe_module
    from lightswe.model.fused import swiglu

    exec(SWIGLU_CHECK.replace("DEVICE", '"cuda"').replace("MIN_EQUAL", "0.99"), {})
    monkeypatch.delenv("LIGHTSWE_COMPILE", raising=False)
    h13 = (torch.randn(4096, 3072, device="cuda") * 3).bfloat16().requires_grad_()
    dy = torch.randn(4096, 1536, device="cuda").bfloat16()
    outs = []
    for flag in (False, True):
        monkeypatch.setattr(moe_module, "SWIGLU_KERNEL", flag)
        h13.grad = None
        y = moe_module._swiglu(h13)
        y.backward(dy)
        outs.append((y.detach(), h13.grad.clone()))
    assert torch.equal(outs[1][0], outs[0][0])  # the compiled forward either way
    torch.testing.assert_close(outs[1][1].float(), outs[0][1].float(), rtol=1e-2, atol=1e-2)
    ref_y, _ = _swiglu_reference(h13, dy)
    assert torch.equal(swiglu(h13.detach()), ref_y)  # eager chain (no grad) = eager autograd's forward


def test_swiglu_triton_backward_in_the_interpreter():
    """The SwiGLU backward kernel under TRITON_INTERPRET=1 on CPU (skipped where Triton is not installed)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", SWIGLU_CHECK.replace("DEVICE", '"cpu"').replace("MIN_EQUAL", "0.0")], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def _one_pass_against_the_reference(device: str) -> None:
    """The one-pass dispatch and combine (``_DispatchFused``, ``_Combine``) against ``_Dispatch`` and ``_Gather``
    + ``weighted_sum`` on one padded layout: outputs and every gradient bit for bit."""
    from lightswe.model import moe as m
    from lightswe.model.fused import weighted_sum

    torch.manual_seed(0)
    tokens, hidden, experts, k = 301, 96, 8, 2
    chosen = torch.stack([torch.randperm(experts - 1)[:k] for _ in range(tokens)]).to(device)  # expert 7 unused
    counts, order, dest, source, position, offsets = m.expert_layout(chosen, experts)
    assert int(offsets[-1]) == source.shape[0] and int(counts.sum()) == tokens * k
    x = torch.randn(tokens, hidden, device=device).bfloat16()
    weights = torch.rand(tokens, k, device=device)
    ys = torch.randn(source.shape[0], hidden, device=device).bfloat16()
    g_xs = torch.randn(source.shape[0], hidden, device=device).bfloat16()
    g_out = torch.randn(tokens, hidden, device=device)
    assignment = torch.full((source.shape[0],), -1, dtype=torch.long, device=device)
    assignment[dest] = order
    results = []
    for fused in (False, True):
        xi, yi, wi = (t.clone().requires_grad_() for t in (x, ys, weights))
        xs = (m._DispatchFused if fused else m._Dispatch).apply(xi, source, position, k)
        out = (m._Combine.apply(yi, position, wi, assignment) if fused else
               weighted_sum(m._Gather.apply(yi, position).view(tokens, k, hidden), wi, torch.float32))
        torch.autograd.backward([xs, out], [g_xs, g_out])
        results.append((xs, out, xi.grad, yi.grad, wi.grad))
    for i, (ref, got) in enumerate(zip(*results)):
        assert got.dtype == ref.dtype
        if i < 4 or device == "cpu":
            assert torch.equal(got, ref), i
        else:  # compiled: the weights' gradient is an fp32 sum over H in Inductor's order
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_one_pass_dispatch_and_combine_equal_the_reference():
    _one_pass_against_the_reference("cpu")


@pytest.mark.gpu
@cuda
def test_one_pass_dispatch_and_combine_compiled_on_cuda(monkeypatch):
    """On CUDA the one-pass chains run compiled (Inductor): forward values and the row gradients bit for bit,
    the routing weights' gradient (an fp32 sum over H in Inductor's order) to fp32 rounding."""
    from lightswe.model import moe as m

    monkeypatch.delenv("LIGHTSWE_COMPILE", raising=False)
    _one_pass_against_the_reference("cuda")
    moe, x = minimax_1b_moe_on_cuda()
    outs = []
    for flag in (False, True):
        monkeypatch.setattr(m, "FUSED_DISPATCH", flag)
        outs.append(run(moe, x, "grouped", monkeypatch, autocast=True))
    assert torch.equal(outs[1][0], outs[0][0])
    # the routing weights' gradient differs in fp32's last bits (summation order), which can flip a bf16 rounding
    # of the router's product gradient: 2 of 4.2 M elements of x's gradient by 1 bf16 ulp (H200, 2026-11-30)
    torch.testing.assert_close(outs[1][2], outs[0][2], rtol=1e-2, atol=1e-2 * outs[0][2].abs().max())
    for name, g in outs[0][3].items():
        if g is not None:
            torch.testing.assert_close(outs[1][3][name], g, rtol=1e-2, atol=1e-2 * g.abs().max(), msg=name)
