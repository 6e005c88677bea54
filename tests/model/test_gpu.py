"""The model's invariants on CUDA, where lightning attention runs the kernels helper's Triton path when present.

Triton multiplies fp32 inputs in tf32, so CUDA results are compared with the CPU fp32 model at 1e-2.
"""

from __future__ import annotations

import pytest
import torch
from lightswe.model import SamplingConfig

from .conftest import random_model

pytestmark = pytest.mark.gpu
TOL = {"rtol": 1e-2, "atol": 1e-2}


@pytest.fixture
def pair(tiny_config):
    cpu = random_model(tiny_config)
    return cpu, random_model(tiny_config).cuda()


def test_cuda_forward_matches_cpu_and_cached_decode_matches_full(pair):
    cpu, gpu = pair
    ids = torch.randint(0, 263, (2, 150))
    full = gpu(ids.cuda()).logits
    torch.testing.assert_close(full.cpu(), cpu(ids).logits, **TOL)
    cache = gpu.new_cache(2)
    steps = [gpu(ids[:, :77].cuda(), cache=cache).logits]
    steps += [gpu(ids[:, t:t + 1].cuda(), cache=cache).logits for t in range(77, 150)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_cuda_packed_equals_separate_and_gradients_match_cpu(pair):
    cpu, gpu = pair
    lengths = [70, 1, 129]
    seqs = [torch.randint(0, 263, (n,)) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed = gpu.token_logprobs(torch.cat(seqs)[None].cuda(), cu_seqlens=cu.cuda())
    separate = torch.cat([gpu.token_logprobs(s[None].cuda()) for s in seqs], dim=1)
    torch.testing.assert_close(packed, separate, **TOL)
    packed.sum().backward()
    cpu.token_logprobs(torch.cat(seqs)[None], cu_seqlens=cu).sum().backward()
    for (name, a), b in zip(gpu.named_parameters(), cpu.parameters()):
        scale = b.grad.abs().max().item() + 1e-6
        assert (a.grad.cpu() - b.grad).abs().max().item() / scale < 2e-2, name


def test_cuda_bf16_generation_logprobs_agree_with_scoring(tiny_config):
    model = random_model(tiny_config).to("cuda", torch.bfloat16)
    prompts = [[1, 2, 3], list(range(30, 130))]
    gens = model.generate(prompts, SamplingConfig(max_new_tokens=20, temperature=1.0, seed=0))
    for prompt, gen in zip(prompts, gens):
        ids = torch.tensor([prompt + gen.token_ids], device="cuda")
        scored = model.token_logprobs(ids)[0, len(prompt):].cpu()
        assert (scored - torch.tensor(gen.logprobs)).abs().mean() < 0.05
