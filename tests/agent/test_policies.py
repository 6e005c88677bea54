"""Policy backends: the built-in tiny model (batched across threads) and the OpenAI-compatible client."""

from __future__ import annotations

import threading

import pytest
from lightswe.agent.policies.base import SamplingParams
from lightswe.agent.policies.model import ModelPolicy
from lightswe.agent.policies.openai_server import OpenAIPolicy, ServerError
from lightswe.model import ByteTokenizer

from .completions_server import CompletionsServer

TOK = ByteTokenizer()
STOP = [TOK.token_id("<|im_end|>"), TOK.eos_token_id]


@pytest.fixture(scope="module")
def tiny() -> ModelPolicy:
    return ModelPolicy.from_spec("tiny", seed=0)


def test_model_policy_samples_within_budget(tiny):
    sampling = SamplingParams(max_new_tokens=12, stop_token_ids=STOP, seed=1)
    tokens, logprobs = tiny.generate(TOK.encode("<|im_start|>user\nhi<|im_end|>\n"), sampling)
    assert 1 <= len(tokens) == len(logprobs) <= 12
    assert all(lp <= 0.0 for lp in logprobs)
    assert all(t not in STOP for t in tokens[:-1])
    again = tiny.generate(TOK.encode("<|im_start|>user\nhi<|im_end|>\n"), sampling)
    assert again == (tokens, logprobs)  # seeded sampling is reproducible


def test_concurrent_episodes_share_batches(tiny):
    sampling = SamplingParams(max_new_tokens=4, temperature=0.0)
    prompts = [TOK.encode(f"prompt {i}") for i in range(6)]
    expected = [tiny.generate_batch([p], sampling)[0] for p in prompts]
    tiny.batch_sizes.clear()
    results, lengths = [None] * len(prompts), [0] * len(prompts)

    def run(i):  # episodes ask with their own seeds and budgets; they still share forward passes
        own = SamplingParams(max_new_tokens=4 + i, temperature=0.0, seed=i)
        tokens, logprobs = tiny.generate(prompts[i], own)
        lengths[i] = len(tokens)
        results[i] = tokens[:4], logprobs[:4]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for (tokens, logprobs), (want_tokens, want_logprobs) in zip(results, expected):
        assert tokens == want_tokens  # greedy: batching does not change what each prompt gets
        assert logprobs == pytest.approx(want_logprobs, abs=1e-5)
    assert sum(tiny.batch_sizes) == 6 and max(tiny.batch_sizes) > 1
    assert lengths == [4 + i for i in range(6)]  # no stop tokens: each ran to its own budget


@pytest.mark.parametrize("batch_invariant", [True, False], ids=["batch-invariant", "batched"])
def test_a_seeded_request_samples_the_same_alone_or_among_concurrent_episodes(batch_invariant):
    """Each request samples with its own seed: run alone, or in whatever batch the threads' timing makes, it gets
    the same tokens (the batch once sampled with its first request's seed). Batch-invariant, its log-probs are
    bit-identical too; batched, they may differ in the last bits."""
    policy = ModelPolicy.from_spec("tiny", seed=0, batch_invariant=batch_invariant, batch_wait_s=0.02)
    prompts = [TOK.encode(f"<|im_start|>user\nprompt {i}{'!' * (5 * i)}<|im_end|>\n") for i in range(5)]
    params = [SamplingParams(max_new_tokens=10 + i, temperature=1.0, seed=100 + i) for i in range(5)]
    alone = [policy.generate(p, s) for p, s in zip(prompts, params)]
    policy.batch_sizes.clear()
    results = [None] * len(prompts)

    def run(i):
        results[i] = policy.generate(prompts[i], params[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in reversed(range(len(prompts)))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for (tokens, logprobs), (want_tokens, want_logprobs) in zip(results, alone, strict=True):
        assert tokens == want_tokens
        if batch_invariant:
            assert logprobs == want_logprobs
        else:
            assert logprobs == pytest.approx(want_logprobs, abs=1e-5)
    assert max(policy.batch_sizes) > 1  # the requests did meet in one batch
    again = policy.generate(prompts[0], SamplingParams(max_new_tokens=10, temperature=1.0, seed=7))
    assert again[0] != alone[0][0]  # another seed, another sample
    # one seeded batched call: prompt i gets its own stream (equal prompts, different samples), reproducibly
    batch = policy.generate_batch([prompts[0]] * 3, params[0])
    assert len({tuple(tokens) for tokens, _ in batch}) == 3 and policy.generate_batch([prompts[0]] * 3, params[0]) == batch


class Recording(ModelPolicy):
    """The real policy; records the sampling keys of each batch its model call held."""

    def _run(self, batch):
        self.batches.append([self.batch_key(r.sampling) for r in batch])
        super()._run(batch)


def test_one_batcher_groups_requests_by_their_sampling_key(tiny):
    """ModelPolicy batches through BatchingPolicy (the vLLM policy's batcher): a batch never mixes temperatures,
    top-p or stops, holds at most max_batch requests, and a failing request's error reaches every caller of its
    batch while the others finish; nothing stays pending."""
    policy = Recording(tiny.model, max_batch=3, batch_wait_s=0.05)
    policy.batches = []
    kinds = [SamplingParams(max_new_tokens=3, temperature=0.0), SamplingParams(max_new_tokens=3, temperature=0.5),
             SamplingParams(max_new_tokens=3, temperature=0.0, stop_token_ids=STOP)]
    asks = [(TOK.encode(f"p{i}"), kinds[i % 3]) for i in range(9)] + [([10**6], kinds[0])]  # the last: bad token
    outcomes = [None] * len(asks)

    def run(i):
        try:
            outcomes[i] = policy.generate(*asks[i])
        except ValueError as err:
            outcomes[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(asks))]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert all(len(set(keys)) == 1 and len(keys) <= 3 for keys in policy.batches), policy.batches
    assert sum(map(len, policy.batches)) == len(asks) == sum(policy.batch_sizes) and max(policy.batch_sizes) > 1
    bad = outcomes[-1]
    assert isinstance(bad, ValueError)
    assert all(o is bad or (isinstance(o, tuple) and len(o[0]) <= 3) for o in outcomes)  # shared error, or a sample
    assert not policy._pending
    assert len(policy.generate(TOK.encode("after"), kinds[0])[0]) == 3  # the batcher still works


def test_openai_client_against_local_server(tiny):
    sampling = SamplingParams(max_new_tokens=10, stop_token_ids=STOP, temperature=0.0)
    prompt = TOK.encode("<|im_start|>user\nfix it<|im_end|>\n<|im_start|>assistant\n")
    with CompletionsServer(tiny, decode=TOK.decode) as server:
        client = OpenAIPolicy(server.url, model="tiny")
        tokens, logprobs = client.generate(prompt, sampling)
        body = server.requests[-1]
    assert (tokens, logprobs) == tiny.generate(prompt, sampling)
    assert body["prompt"] == prompt and body["return_tokens_as_token_ids"] is True and body["logprobs"] == 1
    assert body["stop_token_ids"] == STOP and body["max_tokens"] == 10


def test_openai_client_reports_server_errors():
    class Plain:  # a server that ignores return_tokens_as_token_ids
        def generate(self, token_ids, sampling):
            return [65], [-0.1]

    with CompletionsServer(Plain()) as server:
        client = OpenAIPolicy(server.url, retries=0)
        original = client.request_body
        client.request_body = lambda ids, s: {**original(ids, s), "return_tokens_as_token_ids": False}
        with pytest.raises(ServerError, match="return_tokens_as_token_ids"):
            client.generate([1, 2], SamplingParams(max_new_tokens=2))
    with pytest.raises(ServerError, match="unreachable"):
        OpenAIPolicy(server.url, retries=0, timeout_s=2).generate([1], SamplingParams(max_new_tokens=1))
