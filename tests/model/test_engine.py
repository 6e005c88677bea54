"""The continuous-batching sampler engine on CPU (the same code runs under CUDA graphs in test_engine_gpu.py)."""

from __future__ import annotations

import pytest
import torch
from lightswe.model import SamplingConfig, generate
from lightswe.model.engine import SamplerEngine, _sample

from .conftest import random_model


@pytest.fixture(scope="module")
def sharp_model():
    """Tiny random model with a scaled-up head: logits of a few units, so log-prob errors are visible."""
    from lightswe.model import MiniMaxConfig

    model = random_model(MiniMaxConfig.preset("tiny"))
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    return model


PROMPTS = [[1, 2, 3], list(range(30, 75)), [5] * 17, [7, 8], list(range(100, 120))]


def test_greedy_equals_plain_generate_with_more_prompts_than_slots(sharp_model):
    """5 prompts through 2 slots: rows join as others finish (several prefills), results identical."""
    sampling = SamplingConfig(max_new_tokens=12, temperature=0, stop_token_ids=(256,))
    expected = generate(sharp_model, PROMPTS, sampling)
    engine = SamplerEngine(sharp_model, max_slots=2, max_seq_len=64)
    got = engine.generate(PROMPTS, sampling)
    for e, g in zip(expected, got, strict=True):
        assert g.token_ids == e.token_ids and g.finish_reason == e.finish_reason
        assert g.cache_bytes == e.cache_bytes and g.prompt_tokens == e.prompt_tokens
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(e.logprobs), rtol=0, atol=1e-4)
    assert engine.stats.prefills >= 3 and max(engine.stats.occupancy) == 2
    assert not engine.has_work() and sorted(engine.free) == [0, 1]


def test_sampled_logprobs_equal_the_learners_and_top_p_keeps_the_nucleus(sharp_model):
    """T=0.7, top-p 0.8, fp32: each log-prob equals score(temperature=0.7) at that position (the learner's
    behaviour log-prob), and every sampled token lies in the top-p nucleus of that distribution."""
    sampling = SamplingConfig(max_new_tokens=10, temperature=0.7, top_p=0.8, seed=3)
    gens = SamplerEngine(sharp_model, max_slots=4, max_seq_len=64).generate(PROMPTS[:4], sampling)
    for prompt, gen in zip(PROMPTS[:4], gens):
        ids = torch.tensor([prompt + gen.token_ids])
        with torch.no_grad():
            scored = sharp_model.score(ids, temperature=0.7).logprobs[0, len(prompt):]
            probs = torch.softmax(sharp_model(ids).logits[0, len(prompt) - 1:-1] / 0.7, -1)
        assert (scored - torch.tensor(gen.logprobs)).abs().max() < 1e-4
        for p, token in zip(probs, gen.token_ids):
            higher = p[p > p[token]].sum()  # mass strictly above the token: below top_p if it is in the nucleus
            assert higher < 0.8 + 1e-5


def test_seed_reproduces_and_mixed_requests_keep_their_own_settings(sharp_model):
    engine = SamplerEngine(sharp_model, max_slots=4, max_seq_len=64)
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=11)
    first = [g.token_ids for g in engine.generate(PROMPTS[:3], sampling)]
    again = [g.token_ids for g in engine.generate(PROMPTS[:3], sampling)]
    assert first == again
    greedy = generate(sharp_model, [PROMPTS[1]], SamplingConfig(max_new_tokens=6, temperature=0))[0]
    stop = greedy.token_ids[2]
    ids = [engine.add(PROMPTS[1], SamplingConfig(max_new_tokens=6, temperature=0, stop_token_ids=(stop,))),
           engine.add(PROMPTS[0], SamplingConfig(max_new_tokens=1, temperature=1.0)),
           engine.add(PROMPTS[2], SamplingConfig(max_new_tokens=5, temperature=1.0))]
    done = {}
    while engine.has_work():
        done.update(engine.step())
    stopped = done[ids[0]]
    cut = greedy.token_ids.index(stop) + 1
    assert stopped.token_ids == greedy.token_ids[:cut] and stopped.finish_reason == "stop"
    assert len(done[ids[1]].token_ids) == 1 and done[ids[1]].finish_reason == "length"
    assert len(done[ids[2]].token_ids) == 5


def test_bad_requests_say_what_was_wrong(sharp_model):
    engine = SamplerEngine(sharp_model, max_slots=1, max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len"):
        engine.add(list(range(10)), SamplingConfig(max_new_tokens=8))
    with pytest.raises(ValueError, match="vocab_size"):
        engine.add([100_000], SamplingConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="non-empty"):
        engine.add([], SamplingConfig(max_new_tokens=2))


def test_exponential_race_sampling_draws_from_the_tempered_distribution():
    """argmax p / Exp(1) is a draw from p: frequencies over 40,000 draws match softmax(logits / T)."""
    torch.manual_seed(0)
    logits = torch.randn(1, 6) * 2
    n = 40_000
    rows = logits.expand(n, 6)
    tokens, logprobs = _sample(rows, torch.full((n,), 0.5), torch.ones(n), torch.empty(n, 6).exponential_(), False)
    expected = torch.softmax(logits[0] / 0.5, -1)
    freq = torch.bincount(tokens, minlength=6).float() / n
    assert (freq - expected).abs().max() < 0.01
    torch.testing.assert_close(logprobs, torch.log(expected)[tokens])
    greedy, _ = _sample(rows[:3], torch.zeros(3), torch.ones(3), torch.empty(3, 6).exponential_(), False)
    assert (greedy == logits.argmax()).all()


def test_engine_follows_weight_updates_between_runs(tiny_config):
    """In-place updates (load_state_dict) and replaced parameter tensors (assign=True) both reach the next run,
    the MoE's stacked expert copies included."""
    first, second = random_model(tiny_config, seed=0), random_model(tiny_config, seed=1)
    sampling = SamplingConfig(max_new_tokens=4, temperature=0)
    expected = generate(second, PROMPTS[:2], sampling)
    for assign in (False, True):
        model = random_model(tiny_config, seed=0)
        engine = SamplerEngine(model, max_slots=2, max_seq_len=64)
        before = engine.generate(PROMPTS[:2], sampling)
        assert [g.token_ids for g in before] == [g.token_ids for g in generate(first, PROMPTS[:2], sampling)]
        model.load_state_dict({k: v.clone() for k, v in second.state_dict().items()}, assign=assign)
        after = engine.generate(PROMPTS[:2], sampling)
        for a, e in zip(after, expected):
            assert a.token_ids == e.token_ids
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(e.logprobs), rtol=0, atol=1e-4)


def test_model_policy_batches_continuously_across_threads(tiny_config):
    """ModelPolicy on the engine (continuous=True; the default on CUDA): 5 concurrent episodes with their own
    budgets and settings through 2 slots; greedy results equal the plain loop's, a bad request fails alone."""
    import threading

    from lightswe.agent.policies.base import SamplingParams
    from lightswe.agent.policies.model import ModelPolicy

    model = random_model(tiny_config)
    policy = ModelPolicy(model, max_batch=2, continuous=True)
    expected = [generate(model, [p], SamplingConfig(max_new_tokens=3 + i, temperature=0))[0]
                for i, p in enumerate(PROMPTS)]
    results, errors = [None] * len(PROMPTS), []

    def run(i):
        results[i] = policy.generate(PROMPTS[i], SamplingParams(max_new_tokens=3 + i, temperature=0.0, seed=i))

    def bad():
        try:
            policy.generate([10**6], SamplingParams(max_new_tokens=2))
        except ValueError as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))] + [threading.Thread(target=bad)]
    [t.start() for t in threads]
    [t.join(timeout=300) for t in threads]
    for (tokens, logprobs), want in zip(results, expected, strict=True):
        assert tokens == want.token_ids
        assert logprobs == pytest.approx(want.logprobs, abs=1e-4)
    assert len(errors) == 1 and "vocab_size" in str(errors[0])
    assert max(policy.batch_sizes) == 2 and not policy._inflight and not policy._pending
