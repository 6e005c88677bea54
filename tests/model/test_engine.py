"""The continuous-batching sampler engine on CPU (the same code runs under CUDA graphs in test_engine_gpu.py)."""

from __future__ import annotations

import pytest
import torch
from lightswe.model import MiniMaxForCausalLM, SamplingConfig, generate
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


def test_a_seeded_request_samples_the_same_tokens_alone_or_beside_others(tiny_config):
    """Each seeded request's noise is ``counter_noise`` of its seed and positions: alone, or joining other requests
    mid-run in other slots, it samples the same tokens (the engine's generator was once reseeded by whichever
    request found it idle)."""
    model = random_model(tiny_config)  # a flat distribution: every draw matters
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.0)
    seeds = [5, 6, 7]

    def seeded(seed):
        return SamplingConfig(max_new_tokens=10, temperature=1.0, seed=seed)

    alone = [SamplerEngine(model, max_slots=4, max_seq_len=64).generate([PROMPTS[i]], sampling, seeds=[s])[0]
             for i, s in enumerate(seeds)]
    engine = SamplerEngine(model, max_slots=4, max_seq_len=64)
    first = engine.add(PROMPTS[3], SamplingConfig(max_new_tokens=10, temperature=1.0))  # unseeded neighbour
    done = dict(engine.step())
    ids = [engine.add(PROMPTS[i], seeded(s)) for i, s in enumerate(seeds)]  # join the running batch
    while engine.has_work():
        done.update(engine.step())
    assert first in done
    for rid, want in zip(ids, alone):
        assert done[rid].token_ids == want.token_ids
        torch.testing.assert_close(torch.tensor(done[rid].logprobs), torch.tensor(want.logprobs), rtol=0, atol=1e-4)
    assert alone[0].token_ids != SamplerEngine(model, max_slots=4, max_seq_len=64).generate(
        [PROMPTS[0]], sampling, seeds=[8])[0].token_ids


def test_unseeded_requests_follow_the_global_rng(tiny_config):
    """An unseeded request draws its noise stream from torch's global RNG once: ``torch.manual_seed`` reproduces
    a run, and two unseeded requests of one run differ."""
    model = random_model(tiny_config)
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.0)

    def run():
        torch.manual_seed(3)
        return [g.token_ids for g in SamplerEngine(model, max_slots=2, max_seq_len=64).generate(
            [PROMPTS[0], PROMPTS[0]], sampling)]

    first = run()
    assert first == run() and first[0] != first[1]


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


def _chunk_kernel_emulation(q, k, v, slope, chunk=64):
    """kernels/lightning_attn/chunk.py's forward in PyTorch with its roundings: per chunk, o = round(q
    lambda^(i+1)) round(S) + round((q k^T) * M) v, S <- lambda^L S + round(k lambda^(L-1-j))^T v (round() to the
    inputs' dtype; fp32 products and sums). q, k, v [T, H, D] of one sequence; returns o [T, H, D]."""
    dtype, b = q.dtype, -slope.float() * 1.4426950408889634
    state = torch.zeros(q.shape[1], q.shape[2], v.shape[2])
    outs = []
    for start in range(0, q.shape[0], chunk):
        qc, kc, vc = (x[start:start + chunk].float().transpose(0, 1) for x in (q, k, v))  # [H, L, D]
        n = qc.shape[1]
        pos = torch.arange(n, dtype=torch.float32)
        diff = pos[:, None] - pos[None, :]
        mask = torch.where(diff >= 0, torch.exp2(b[:, None, None] * diff.clamp(min=0)), 0.0)
        inter = (qc * torch.exp2(b[:, None] * (pos + 1))[..., None]).to(dtype).float() @ state.to(dtype).float()
        o = inter + ((qc @ kc.transpose(1, 2)) * mask).to(dtype).float() @ vc
        outs.append(o.transpose(0, 1).to(dtype))
        kd = (kc * torch.exp2(b[:, None] * (n - 1 - pos))[..., None]).to(dtype).float()
        state = torch.exp2(b * n)[:, None, None] * state + kd.transpose(1, 2) @ vc
    return torch.cat(outs)


def test_chunk_form_decode_rounds_as_the_chunk_kernel():
    """bf16, prompts ending before, on and after chunk boundaries, decoding across the next boundary: the
    chunk-form step (state at the chunk start from ``chunk_start``, then one token at a time) gives the chunk
    kernel's outputs but for fp32 summation order (< 0.1% of elements differ by an ulp), where the exact fp32
    recurrence differs in over 10%."""
    from lightswe.kernels.lightning_attn.decode import lightning_attn_decode_chunk_form
    from lightswe.kernels.lightning_attn.naive import lightning_attn_decode_naive
    from lightswe.model.engine import chunk_start

    torch.manual_seed(0)
    heads, dim, total = 4, 16, 150
    lengths = [70, 64, 63, 5, 128]
    q, k, v = (torch.nn.functional.silu(torch.randn(len(lengths), total, heads, dim)).bfloat16() for _ in range(3))
    slope = torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)]) * 0.3
    full = torch.stack([_chunk_kernel_emulation(q[r], k[r], v[r], slope) for r in range(len(lengths))])
    packed = [torch.cat([x[r, :n] for r, n in enumerate(lengths)]) for x in (k, v)]
    state, keys, values = chunk_start(*packed, slope, lengths, 64)
    exact_state = torch.zeros(len(lengths), heads, dim, dim)
    for r, n in enumerate(lengths):  # the exact recurrence's state after the prompt
        for t in range(n):
            exact_state[r] = torch.exp(-slope)[:, None, None] * exact_state[r] + k[r, t].float()[:, :, None] \
                * v[r, t].float()[:, None, :]
    pos = torch.tensor(lengths, dtype=torch.int32)
    rows = torch.arange(len(lengths))
    chunk_diff, exact_diff = [], []
    for _ in range(total - max(lengths)):
        p = pos.long()
        want = full[rows, p]
        got = lightning_attn_decode_chunk_form(q[rows, p], k[rows, p], v[rows, p], slope, state, keys, values, pos)
        plain = lightning_attn_decode_naive(q[rows, p], k[rows, p], v[rows, p], slope, exact_state)
        chunk_diff.append((got != want).float().mean())
        exact_diff.append((plain != want).float().mean())
        pos = pos + 1
    assert torch.stack(chunk_diff).mean() < 1e-3
    assert torch.stack(exact_diff).mean() > 0.1
    assert state.isfinite().all()


def test_chunk_form_engine_equals_the_plain_loop(tiny_config):
    """The engine with chunk-form lightning decoding (fp32: the rounding is a no-op) keeps its chunk state right
    across prefill tails and chunk boundaries: greedy tokens and log-probs equal generate()'s."""
    model = random_model(tiny_config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    prompts = [list(range(1, 61)), list(range(5, 69)), [7, 8], list(range(40, 170))]
    sampling = SamplingConfig(max_new_tokens=20, temperature=0)
    expected = generate(model, prompts, sampling)
    engine = SamplerEngine(model, max_slots=3, max_seq_len=256, lightning_decode="chunk")
    assert engine.cache.chunk == 64
    for e, g in zip(expected, engine.generate(prompts, sampling), strict=True):
        assert g.token_ids == e.token_ids
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(e.logprobs), rtol=0, atol=1e-4)


def test_mixed_precision_follows_the_autocast_learner(tiny_config):
    """fp32 weights sampled under bf16 autocast (the Learner's numerics: fp32 residual stream, bf16 matrix
    products): the first token (packed prefill) equals the autocast learner's, and the whole run agrees with it
    better than a bf16 copy with a bf16 residual stream does. Bad settings are refused."""
    model = random_model(tiny_config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.0, seed=0)

    def disagreement(engine):
        gens = engine.generate(PROMPTS, sampling)
        diffs = []
        for prompt, gen in zip(PROMPTS, gens):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                scored = model.score(torch.tensor([prompt + gen.token_ids])).logprobs[0, len(prompt):]
            diffs.append((scored - torch.tensor(gen.logprobs)).abs())
        return torch.stack([d[0] for d in diffs]).mean(), torch.cat(diffs).mean()

    mixed = SamplerEngine(model, max_slots=4, max_seq_len=128, autocast_dtype=torch.bfloat16)
    assert mixed.autocast_dtype == torch.bfloat16 and mixed._w13[0].dtype == torch.bfloat16
    first, mean = disagreement(mixed)
    copy = random_model(tiny_config).to(torch.bfloat16)
    copy.load_state_dict(model.state_dict())
    _, plain_mean = disagreement(SamplerEngine(copy, max_slots=4, max_seq_len=128, autocast_dtype=None))
    assert first < 1e-4 and mean < plain_mean
    assert SamplerEngine(copy, max_slots=1, max_seq_len=8).autocast_dtype == torch.bfloat16  # "auto"
    with pytest.raises(ValueError, match="autocast_dtype"):
        SamplerEngine(model, max_slots=1, max_seq_len=8, autocast_dtype=torch.float64)
    with pytest.raises(ValueError, match="lightning_decode"):
        SamplerEngine(model, max_slots=1, max_seq_len=8, lightning_decode="fast")


def test_engine_for_and_model_policy_sample_with_the_learners_mixed_precision(tiny_config):
    """The training loop passes ``LearnerConfig.autocast_dtype`` to ModelPolicy: the cached engine is rebuilt for
    another mixed precision, reused for the same one, and a bad dtype is refused in one line."""
    from lightswe.agent.policies.base import SamplingParams
    from lightswe.agent.policies.model import ModelPolicy
    from lightswe.model.generation import engine_for

    model = random_model(tiny_config)
    fp32 = engine_for(model, 2, 40)
    assert fp32.autocast_dtype is None
    bf16 = engine_for(model, 2, 40, autocast_dtype="bfloat16")
    assert bf16 is not fp32 and bf16.autocast_dtype is torch.bfloat16
    assert engine_for(model, 2, 40, autocast_dtype=torch.bfloat16) is bf16
    with pytest.raises(ValueError, match="autocast_dtype"):
        engine_for(model, 2, 40, autocast_dtype="float64")

    policy = ModelPolicy(model, max_batch=2, continuous=True, autocast_dtype="bfloat16")
    tokens, logprobs = policy.generate(PROMPTS[0], SamplingParams(max_new_tokens=4, temperature=0.0))
    assert len(tokens) == len(logprobs) == 4 and model._sampler_engine.autocast_dtype is torch.bfloat16


def test_state_bytes_a_decode_step_moves(tiny_config):
    """The sampler benchmark's bound: the exact step reads and writes the fp32 state; the chunk form reads its
    bf16 copy and the chunk's keys and values, and advances the fp32 state once per chunk."""
    from lightswe.model.engine import StaticCache

    model = MiniMaxForCausalLM(tiny_config)
    c = tiny_config
    exact = StaticCache(model, 2, 32)
    layers = len(exact.lightning_layers)
    fp32 = c.num_attention_heads * c.head_dim ** 2 * 4 * layers  # one row's state, every lightning layer
    assert exact.state_step_bytes_per_row() == 2 * fp32
    chunk = StaticCache(model, 2, 32, kv_dtype=torch.bfloat16, chunk=64)
    token = c.num_attention_heads * c.head_dim * 2 * layers  # one token's bf16 key, every lightning layer
    expected = fp32 / 2 + 2 * token * (63 / 2 + 1) + (2 * fp32 + fp32 / 2) / 64
    assert chunk.state_step_bytes_per_row() == pytest.approx(expected)
