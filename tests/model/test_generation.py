from __future__ import annotations

import pytest
import torch
from lightswe.model import HybridCache, SamplingConfig


def _greedy_reference(model, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_batch_of_different_lengths_equals_full_forward(tiny_model):
    prompts = [[1, 2, 3], list(range(40, 77)), [200]]
    gens = tiny_model.generate(prompts, SamplingConfig(max_new_tokens=12, temperature=0))
    for prompt, gen in zip(prompts, gens):
        assert gen.token_ids == _greedy_reference(tiny_model, prompt, 12)
        assert gen.finish_reason == "length" and gen.prompt_tokens == len(prompt)


def test_sampled_logprobs_equal_the_model_logprobs(tiny_model):
    prompts = [[5, 6, 7, 8], [9] * 17]
    gens = tiny_model.generate(prompts, SamplingConfig(max_new_tokens=10, temperature=0.7, seed=3))
    for prompt, gen in zip(prompts, gens):
        ids = torch.tensor([prompt + gen.token_ids])
        expected = tiny_model.token_logprobs(ids, temperature=0.7)[0, len(prompt):]
        torch.testing.assert_close(torch.tensor(gen.logprobs), expected, rtol=1e-4, atol=1e-4)


def test_seed_makes_sampling_reproducible(tiny_model):
    sampling = SamplingConfig(max_new_tokens=15, temperature=1.0, top_p=0.9, seed=11)
    a = tiny_model.generate([[1, 2], [3, 4, 5]], sampling)
    b = tiny_model.generate([[1, 2], [3, 4, 5]], sampling)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_tiny_top_p_is_greedy(tiny_model):
    prompt = [10, 20, 30]
    gen = tiny_model.generate([prompt], SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=0))[0]
    assert gen.token_ids == _greedy_reference(tiny_model, prompt, 6)


def test_stop_tokens_end_each_sequence_and_are_kept(tiny_model):
    prompts = [[1, 2, 3], [4, 5]]
    free = tiny_model.generate(prompts, SamplingConfig(max_new_tokens=8, temperature=0))
    stop = free[0].token_ids[2]  # stops the first sequence at its third token
    gens = tiny_model.generate(prompts, SamplingConfig(max_new_tokens=8, temperature=0, stop_token_ids=(stop,)))
    first = free[0].token_ids.index(stop)
    assert gens[0].token_ids == free[0].token_ids[:first + 1] and gens[0].finish_reason == "stop"
    if stop in free[1].token_ids:
        assert gens[1].finish_reason == "stop"
    else:
        assert gens[1].token_ids == free[1].token_ids and gens[1].finish_reason == "length"


def test_cache_memory_lightning_state_flat_kv_grows(tiny_config):
    cache = HybridCache(tiny_config, 1)
    state = cache.state_bytes_per_sequence()
    assert state == 3 * tiny_config.num_attention_heads * tiny_config.head_dim ** 2 * 4  # 3 lightning layers, fp32
    assert cache.kv_bytes_per_token() == 1 * 2 * tiny_config.num_key_value_heads * tiny_config.head_dim * 4


def test_generation_reports_cache_bytes(tiny_model):
    gens = tiny_model.generate([[1] * 5, [2] * 50], SamplingConfig(max_new_tokens=4, temperature=0))
    cache = tiny_model.new_cache(1)
    for gen in gens:  # the last sampled token is not in the cache yet
        expected = cache.state_bytes_per_sequence() + (gen.prompt_tokens + 3) * cache.kv_bytes_per_token()
        assert gen.cache_bytes == expected


def test_bad_requests(tiny_model):
    with pytest.raises(ValueError, match="non-empty"):
        tiny_model.generate([[]], SamplingConfig())
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_model.generate([[10_000]], SamplingConfig())
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)


def test_a_seeded_row_samples_the_same_tokens_alone_or_batched(tiny_model):
    """Per-row generators: a row's tokens depend on its own seed, not on which prompts share its batch, their
    order or their seeds (the batch once sampled every row from its first request's seed)."""
    from lightswe.model.generation import generate_loop, row_seed

    prompts = [[5, 6, 7, 8], list(range(30, 61)), [9] * 17, [200, 1]]
    seeds = [3, 4, 3, 1_000_003]
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0)
    alone = [generate_loop(tiny_model, [p], sampling, seeds=[s])[0] for p, s in zip(prompts, seeds)]
    together = generate_loop(tiny_model, prompts, sampling, seeds=seeds)
    shuffled = generate_loop(tiny_model, prompts[::-1], sampling, seeds=seeds[::-1])[::-1]
    for a, b, c in zip(alone, together, shuffled):
        assert a.token_ids == b.token_ids == c.token_ids
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), rtol=0, atol=1e-5)
    # a call's seed spawns one stream per row: equal prompts get independent samples, reproducibly
    same = tiny_model.generate([prompts[0]] * 3, SamplingConfig(max_new_tokens=12, temperature=1.0, seed=7))
    assert len({tuple(g.token_ids) for g in same}) == 3
    row = generate_loop(tiny_model, [prompts[0]], sampling, seeds=[row_seed(7, 2)])[0]
    assert row.token_ids == same[2].token_ids
    other = generate_loop(tiny_model, [prompts[0]], sampling, seeds=[4])[0]
    assert other.token_ids != alone[0].token_ids  # another seed, another sample


def test_row_seeds_are_independent_and_checked(tiny_model):
    from lightswe.model.generation import generate_loop, row_seed

    derived = {row_seed(s, k) for s in range(20) for k in range(20)}
    assert len(derived) == 400 and all(0 <= d < 2**63 for d in derived)  # seed + row would give 39 values
    assert row_seed(5, 1, 2) != row_seed(5, 2, 1) and row_seed(5, 1) == row_seed(5, 1)
    with pytest.raises(ValueError, match=">= 0"):
        row_seed(-1, 0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        SamplingConfig(seed=-3)
    with pytest.raises(ValueError, match="one seed"):
        generate_loop(tiny_model, [[1], [2]], SamplingConfig(), seeds=[1])


def test_counter_noise_is_exponential_and_samples_the_distribution():
    """``counter_noise`` (the GPU engine's in-graph noise): Exp(1) by a Kolmogorov-Smirnov bound, uncorrelated
    across counters and seeds, a pure function of (seed, counter, token), and ``argmax p / noise`` draws from p."""
    from lightswe.model.generation import counter_noise

    seeds = torch.tensor([0, 1, 2 ** 62 + 5, 12345], dtype=torch.long)
    noise = counter_noise(seeds, torch.tensor([0, 0, 7, 100_000]), 50_000)
    assert noise.shape == (4, 50_000) and noise.dtype == torch.float32 and bool((noise > 0).all())
    g = torch.Generator().manual_seed(0)
    many = counter_noise(torch.randint(0, 2 ** 62, (16,), generator=g), torch.randint(0, 10 ** 6, (16,), generator=g),
                         50_000)
    x = many.flatten().double().sort().values
    ks = ((1 - torch.exp(-x)) - torch.arange(1, len(x) + 1, dtype=torch.float64) / len(x)).abs().max().item()
    assert ks < 1.63 / len(x) ** 0.5  # the 1% critical value
    assert torch.equal(noise, counter_noise(seeds, torch.tensor([0, 0, 7, 100_000]), 50_000))
    pairs = counter_noise(torch.tensor([7, 7, 8]), torch.tensor([10, 11, 10]), 50_000)
    assert torch.corrcoef(pairs).triu(1).abs().max().item() < 0.03
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 100_000
    draws = (p / counter_noise(torch.full((n,), 3, dtype=torch.long), torch.arange(n), 4)).argmax(-1)
    assert torch.allclose(torch.bincount(draws, minlength=4) / n, p, atol=0.006)
