"""The bf16x3 LM head (model/head.py): log-probs and entropies within 1e-4 of fp64 logits (the sampler/learner
agreement MiniMax-M1 keeps the head in fp32 for), gradients at bf16 accuracy, the exact logit gradient formula,
and ``score`` taking it on CUDA under autocast only."""

from __future__ import annotations

import pytest
import torch
from lightswe.model.head import _logit_grad, head_logprobs, logprob_entropy, split_bf16, use_split_head

from .conftest import random_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def reference(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, temperature: float, gl, ge):
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    lp, ent = logprob_entropy(h64 @ w64.T / temperature, t)
    (lp * gl.double() + ent * ge.double()).sum().backward()
    return lp, ent, h64.grad, w64.grad


def check(device: str, tokens: int, hidden: int, vocab: int, temperature: float, chunk: int, max_err: float,
          mean_err: float):
    g = torch.Generator(device).manual_seed(0)
    h = torch.randn(tokens, hidden, device=device, generator=g).requires_grad_()
    w = (torch.randn(vocab, hidden, device=device, generator=g) * 0.1).requires_grad_()  # logits ~ N(0, 3)
    t = torch.randint(0, vocab, (tokens,), device=device, generator=g)
    gl, ge = torch.randn(tokens, device=device, generator=g), torch.randn(tokens, device=device, generator=g)
    lp, ent = head_logprobs(h, w, t, temperature, chunk)
    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == ent.shape == (tokens,)
    (lp * gl + ent * ge).sum().backward()
    lp64, ent64, gh64, gw64 = reference(h, w, t, temperature, gl, ge)
    err = (lp.double() - lp64).abs()
    assert err.max() <= max_err and err.mean() <= mean_err, (err.max().item(), err.mean().item())
    assert (ent.double() - ent64).abs().max() <= max_err
    bf16 = head_bf16_error(h, w, t, temperature, lp64)
    assert bf16 > 1e-3  # the check can tell: a plain bf16 head misses it by > 10x
    for got, want in ((h.grad, gh64), (w.grad, gw64)):  # bf16 backward, as every product under autocast
        assert (got.double() - want).norm() <= 2e-2 * want.norm()


def head_bf16_error(h, w, t, temperature, lp64) -> float:
    z = (h.detach().bfloat16().float() @ w.detach().bfloat16().float().T) / temperature
    return (logprob_entropy(z, t)[0].double() - lp64).abs().max().item()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_split_head_matches_fp64_on_cpu(temperature):
    check("cpu", 300, 256, 3000, temperature, chunk=128, max_err=1e-4, mean_err=2e-5)  # last chunk: 44 rows


def test_split_parts_and_the_logit_gradient_formula():
    x = torch.randn(1000) * 10
    hi, lo = split_bf16(x)
    assert (hi.float() + lo.float() - x).abs().max() <= 2 ** -16 * x.abs().max()
    assert (sum(p.float() for p in split_bf16(x, 3)) - x).abs().max() <= 2 ** -23 * x.abs().max()
    z = torch.randn(5, 40, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 40, (5,))
    gl, ge = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    lp, ent = logprob_entropy(z, t)
    (lp * gl + ent * ge).sum().backward()
    torch.testing.assert_close(_logit_grad(z.detach().clone(), t, gl, ge), z.grad, rtol=1e-12, atol=1e-12)


def test_empty_input():
    lp, ent = head_logprobs(torch.zeros(0, 8), torch.randn(16, 8), torch.zeros(0, dtype=torch.long))
    assert lp.shape == ent.shape == (0,)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_split_head_matches_fp64_on_cuda(temperature):
    """minimax-1b's head shape (H 1024, V 32,768), tensor-core GEMMs with fp32 output: 1.4e-4 max measured on an
    H200 (the tensor cores' truncating fp32 accumulation; see model/head.py), a plain bf16 head ~1e-2."""
    check("cuda", 3000, 1024, 32768, temperature, chunk=1024, max_err=3e-4, mean_err=1e-4)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("head", ["auto", "fp32"])
def test_score_under_cuda_autocast_keeps_the_head_accurate(tiny_config, head, monkeypatch):
    """score() under bf16 autocast equals the fp64 head applied to the same final hidden states, with the split
    head (auto) and with LIGHTSWE_HEAD=fp32."""
    monkeypatch.setenv("LIGHTSWE_HEAD", head)
    model = random_model(tiny_config).cuda()
    ids = torch.randint(0, tiny_config.vocab_size, (2, 50), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        scored = model.score(ids, temperature=0.8)
        hidden, _ = model.hidden_states(ids)
    z = hidden[:, :-1].double() @ model.lm_head.weight.double().T / 0.8
    lp, ent = logprob_entropy(z.reshape(-1, z.shape[-1]), ids[:, 1:].reshape(-1))
    assert scored.logprobs.dtype == torch.float32
    assert (scored.logprobs[:, 1:].double() - lp.view(2, 49)).abs().max() <= 1e-4
    assert (scored.entropy[:, 1:].double() - ent.view(2, 49)).abs().max() <= 1e-4


def test_bad_head_choice_is_refused(monkeypatch):
    monkeypatch.setenv("LIGHTSWE_HEAD", "tf32")
    with pytest.raises(ValueError, match="LIGHTSWE_HEAD='tf32'; expected one of auto, fp32"):
        use_split_head(torch.zeros(1))


TRITON_CHECK = """
import torch
from lightswe.model import head_kernels
from lightswe.model.head import _logit_grad, logprob_entropy
assert head_kernels.available(torch.zeros(1))
torch.manual_seed(0)
z = torch.randn(6, 5000) * 4  # 5000: not a multiple of the kernel's block
t, gl, ge = torch.randint(0, 5000, (6,)), torch.randn(6), torch.randn(6)
for temperature in (1.0, 0.7):
    lp, ent = head_kernels.logit_stats(z, t, temperature)
    lp_ref, ent_ref = logprob_entropy(z / temperature, t)
    torch.testing.assert_close(lp, lp_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ent_ref, rtol=0, atol=1e-4)
    g = head_kernels.logit_grad(z, t, gl, ge, temperature)
    g_ref = _logit_grad((z / temperature).clone(), t, gl, ge) / temperature
    assert g.dtype == torch.bfloat16
    torch.testing.assert_close(g.float(), g_ref, rtol=1e-2, atol=1e-2 * g_ref.abs().max().item())
    # the saved form: log-probs as fp16 offsets from block maxima, log-sum-exp and E_p[z / T] from the forward
    # pass, the gradient from them alone (written over them as bf16)
    saved = head_kernels.saved_buffers(6, 5000, z.device)
    lp2, ent2 = head_kernels.logit_stats(z, t, temperature, saved)
    assert torch.equal(lp2, lp) and torch.equal(ent2, ent)
    zs, mb, lse, mean = saved
    blocks = torch.arange(5000) // head_kernels.BLOCK_V
    # within one fp16 step (the interpreter truncates where the GPU rounds to nearest)
    torch.testing.assert_close(zs.float() + mb[:, blocks] - lse[:, None], torch.log_softmax(z / temperature, -1),
                               rtol=2 ** -10, atol=1e-5)
    assert (zs <= 0).all() and (mb[:, -1] == (z / temperature).max(-1).values).all()
    torch.testing.assert_close(lse, torch.logsumexp(z / temperature, -1), rtol=0, atol=1e-5)
    torch.testing.assert_close(mean, lse - ent, rtol=0, atol=1e-4)
    g2 = head_kernels.logit_grad_saved(saved, t, gl, ge, temperature)
    assert g2.data_ptr() == zs.data_ptr() and g2.dtype == torch.bfloat16
    torch.testing.assert_close(g2.float(), g_ref, rtol=1e-2, atol=1e-2 * g_ref.abs().max().item())
print("ok")
"""


def test_triton_kernels_equal_the_torch_formulas_in_the_interpreter():
    """The one-pass Triton kernels (model/head_kernels.py) under TRITON_INTERPRET=1 on CPU, against the torch ops
    the CPU path uses (skipped where Triton is not installed)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
