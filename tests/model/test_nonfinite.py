"""Non-finite logits, one kind of fault with one error class (``lightswe.errors.NonFiniteError``).

Every built-in sampler meets them the same way: the plain loop (``generation.sample``: before, ``torch.multinomial``
raised a bare RuntimeError at T > 0 and ``argmax`` picked a token silently at T = 0), the batched engine
(``SamplerEngine``: before, a NaN row sampled garbage to its budget), the ``hf:`` models, the policy that batches
requests (a bad row must not fail its batch-mates) and the learner (before, a NaN log-prob became a NaN update of
the weights). Real models whose weights are poisoned (NaN, an overflow to inf); the logits of the all -inf case
are built by hand (no weights give them), as is the tiny-temperature overflow.
"""

from __future__ import annotations

import threading

import pytest
import torch
from lightswe.agent.cispo import CISPOLoss
from lightswe.agent.learner import Learner, LearnerConfig, TrainBatch
from lightswe.agent.policies.base import SampleError, SamplingParams, check_sample
from lightswe.agent.policies.model import ModelPolicy
from lightswe.errors import InfrastructureError, NonFiniteError
from lightswe.model import SamplingConfig
from lightswe.model.engine import SamplerEngine
from lightswe.model.generation import generate_loop, sample

from .conftest import random_model

POISON = 7  # a token id whose embedding row is poisoned: only prompts that hold it go bad
GOOD, BAD = [1, 2, 3], [1, POISON, 3]
SETTINGS = [SamplingConfig(max_new_tokens=5, temperature=1.0, seed=3),  # multinomial raised here before
            SamplingConfig(max_new_tokens=5, temperature=0.0),  # argmax picked a token here before
            SamplingConfig(max_new_tokens=5, temperature=0.7, top_p=0.5, seed=3)]  # top-p over NaN


def _poison(model, how: str):
    with torch.no_grad():
        if how == "nan_weights":  # a damaged checkpoint: every row's logits NaN
            model.lm_head.weight[5, 0] = torch.nan
        elif how == "overflow":  # a diverged LM head: logits overflow fp32 to +/-inf
            model.lm_head.weight.mul_(1e36)
            model.model.norm.weight.mul_(1e4)
        elif how == "nan_token":  # one embedding row: only the prompts holding it
            model.model.embed_tokens.weight[POISON] = torch.nan
    return model


@pytest.mark.parametrize("how", ["nan_weights", "overflow"])
@pytest.mark.parametrize("sampling", SETTINGS, ids=["T1", "greedy", "top_p"])
def test_the_plain_loop_raises_the_one_error_for_poisoned_weights(tiny_config, how, sampling):
    model = _poison(random_model(tiny_config), how)
    with pytest.raises(NonFiniteError, match="not finite in 1 of 1 row") as info:
        generate_loop(model, [GOOD], sampling)
    assert isinstance(info.value, InfrastructureError) and "fix: check the weights" in str(info.value)


def test_sample_checks_each_used_row_and_keeps_masks_and_tiny_temperatures():
    finite = torch.tensor([2.0, 1.0, 0.0, -1.0])
    masked = torch.tensor([2.0, -torch.inf, 0.0, -torch.inf])  # -inf beside finite values: a mask, fine
    for row in ([torch.nan, 1.0, 0.0, 0.0], [torch.inf, 1.0, 0.0, 0.0], [-torch.inf] * 4, [torch.nan] * 4):
        logits = torch.stack([finite, torch.tensor(row)])
        for sampling in SETTINGS:
            with pytest.raises(NonFiniteError, match=r"1 of 2 row\(s\) \(row 1"):
                sample(logits, sampling, None)
        tokens, logprobs = sample(logits, SETTINGS[0], None, active=torch.tensor([True, False]))  # row 1 finished
        assert torch.isfinite(logprobs[0])
    tokens, logprobs = sample(torch.stack([finite, masked]), SETTINGS[0], None)
    assert tokens[1] in (0, 2) and torch.isfinite(logprobs).all()
    for t in (1e-30, 1e-40, 1e-45):  # |logit| / T overflows fp32 from ~1e-38: before, NaN and a RuntimeError
        tokens, logprobs = sample(torch.stack([finite, -finite - 5]), SamplingConfig(temperature=t), None)
        assert tokens.tolist() == [0, 3] and logprobs.tolist() == [0.0, 0.0]


def test_the_engine_flags_the_bad_row_and_leaves_its_batch_mates_alone(tiny_config):
    clean = random_model(tiny_config)
    model = _poison(random_model(tiny_config), "nan_token")
    for sampling in SETTINGS:
        want = SamplerEngine(clean, max_slots=4, max_seq_len=64).generate([GOOD], sampling, seeds=[sampling.seed])[0]
        engine = SamplerEngine(model, max_slots=4, max_seq_len=64)
        good, bad = engine.add(GOOD, sampling), engine.add(BAD, sampling)
        done = {}
        while engine.has_work():
            done.update(engine.step())
        assert done[good].token_ids == want.token_ids and done[good].finish_reason == want.finish_reason
        assert done[bad].finish_reason == "error" and len(done[bad].token_ids) == 1  # stopped at once
        with pytest.raises(NonFiniteError, match=r"1 of 2 row\(s\) \(first: prompt 1"):
            engine.generate([GOOD, BAD], sampling)
        assert engine.generate([GOOD], sampling, seeds=[sampling.seed])[0].token_ids == want.token_ids
    # the slot the NaN row held is clean for the next request, also one shorter than the NaN row's (before: its
    # NaN keys past the new prompt reached it through the masked attention, 0 x NaN, and it failed at token 2)
    short = [[1, 2], [1, 2]]
    assert [g.token_ids for g in engine.generate(short, SETTINGS[1])] == \
        [g.token_ids for g in SamplerEngine(clean, max_slots=4, max_seq_len=64).generate(short, SETTINGS[1])]
    tiny = SamplerEngine(clean, max_slots=2, max_seq_len=64).generate([GOOD], SamplingConfig(
        max_new_tokens=4, temperature=1e-40, seed=1))[0]
    greedy = SamplerEngine(clean, max_slots=2, max_seq_len=64).generate([GOOD], SETTINGS[1])[0]
    assert tiny.token_ids == greedy.token_ids[:4] and tiny.logprobs == [0.0] * 4


@pytest.mark.parametrize("continuous", [False, True], ids=["batched", "engine"])
def test_the_policy_fails_only_the_request_whose_logits_broke(tiny_config, continuous):
    """Concurrent requests (batched together or not, by thread timing): the poisoned prompt raises the one error
    class, each of the others gets the tokens it gets alone."""
    model = _poison(random_model(tiny_config), "nan_token")
    policy = ModelPolicy(model, max_batch=4, batch_wait_s=0.05, continuous=continuous)
    sampling = SamplingParams(max_new_tokens=4, temperature=1.0, seed=5)
    want = ModelPolicy(model, continuous=continuous).generate(GOOD, sampling)
    prompts = [GOOD, BAD, GOOD, BAD]
    results: list = [None] * len(prompts)

    def run(i):
        try:
            results[i] = policy.generate(prompts[i], sampling)
        except Exception as err:  # noqa: BLE001 - checked below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in threads]
    [t.join(timeout=300) for t in threads]
    for tokens, logprobs in (results[0], results[2]):  # batch-mates change the last bits, never the tokens
        assert tokens == want[0] and logprobs == pytest.approx(want[1], abs=1e-5)
    for err in results[1::2]:
        assert isinstance(err, NonFiniteError) and "not finite" in str(err)
    if not continuous:  # the poisoned row shared a batch with good ones (then each ran alone)
        assert max(policy.batch_sizes) > 1


def test_a_server_sample_with_a_nan_log_prob_is_the_same_kind():
    sampling = SamplingParams(max_new_tokens=4)
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(NonFiniteError) as info:
            check_sample(([1, 2], [-0.5, value]), sampling)
        assert isinstance(info.value, SampleError)
    with pytest.raises(SampleError) as info:  # a positive log-prob is wrong, not non-finite
        check_sample(([1], [0.5]), sampling)
    assert not isinstance(info.value, NonFiniteError)


def test_hf_models_raise_the_same_error(tmp_path):
    from lightswe.model.hf import HFCausalLM, tiny_checkpoint

    model = HFCausalLM.from_pretrained(tiny_checkpoint(tmp_path / "llama", "llama", seed=1))
    want = model.generate([GOOD], SETTINGS[0])[0]
    with torch.no_grad():
        model.hf.get_input_embeddings().weight[POISON] = torch.nan
    for sampling in SETTINGS:
        with pytest.raises(NonFiniteError, match="not finite"):
            model.generate([GOOD, BAD], sampling)
    assert model.generate([GOOD], SETTINGS[0])[0].token_ids == want.token_ids


def test_the_learner_refuses_an_update_from_non_finite_log_probs(tiny_config):
    """A NaN weight makes every log-prob NaN: the step raises before the optimiser, the weights stay as they were
    (before, AdamW wrote NaN into every parameter and the next checkpoint saved them)."""
    model = _poison(random_model(tiny_config).train(), "nan_weights")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    batch = TrainBatch.from_sequences([[1, 2, 3, 4, 5]] * 2, [[0, 0, 1, 1, 1]] * 2, [[0.0, 0.0, -1.0, -1.0, -1.0]] * 2,
                                      [1.0, -1.0])
    for behaviour in ("sampler", "recompute"):
        learner = Learner(model, CISPOLoss(), LearnerConfig(lr=1e-2, minibatches=1, behaviour=behaviour))
        with pytest.raises(NonFiniteError, match="update was not applied"):
            learner.step(batch)
        assert learner.updates == 0
        for k, v in model.named_parameters():
            torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True, msg=k)


def _shape(message: str) -> str:
    """A non-finite message with its sampler ('where: ...'), counts and detail ('(...)' after 'row(s)') taken out."""
    import re

    return re.sub(r"\d+ of \d+ row\(s\) \([^)]*\)", "N of M row(s) (...)", message.split(": ", 1)[1])


@pytest.mark.parametrize("continuous", [False, True], ids=["batched", "engine"])
def test_every_sampler_says_it_in_the_one_message_with_one_fix(tiny_config, continuous):
    """The plain loop, the engine and the policy over either: one message (``generation.non_finite_rows_error``),
    its fix said once; before, the engine and the policy each carried a copy of the fix text, already drifting."""
    model = _poison(random_model(tiny_config), "nan_token")
    messages = []
    with pytest.raises(NonFiniteError) as info:
        generate_loop(model, [BAD], SETTINGS[0])
    messages.append(str(info.value))
    with pytest.raises(NonFiniteError) as info:
        SamplerEngine(model, max_slots=2, max_seq_len=64).generate([GOOD, BAD], SETTINGS[0])
    messages.append(str(info.value))
    with pytest.raises(NonFiniteError) as info:
        ModelPolicy(model, continuous=continuous).generate(BAD, SamplingParams(max_new_tokens=4, seed=5))
    messages.append(str(info.value))
    assert all(m.count("fix:") == 1 for m in messages), messages
    assert len({_shape(m) for m in messages}) == 1, messages
    assert messages[1].startswith("the sampler engine: ") and "(first: prompt 1, at token 1)" in messages[1]
