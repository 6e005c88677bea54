"""Transformers checkpoints (Llama, Qwen2) as learner and sampler: ``lightswe.model.hf``."""

from __future__ import annotations

import pytest
import torch
from lightswe.agent.checkpointing import load_checkpoint, save_checkpoint
from lightswe.agent.cispo import CISPOLoss
from lightswe.agent.learner import Learner, LearnerConfig, TrainBatch
from lightswe.agent.policies.model import ModelPolicy
from lightswe.agent.policies.spec import make_policy, split_spec, tokenizer_path
from lightswe.errors import UserInputError
from lightswe.model import ByteTokenizer, SamplingConfig, load_tokenizer
from lightswe.model.hf import HFCausalLM, check_chat_template, hf_path, tiny_checkpoint

TOK = ByteTokenizer()
TEXTS = ["<|im_start|>user\nhé, fix `a+b` <tool_calls>\n{\"name\": \"view\"}\n</tool_calls><|im_end|>\n",
         "plain ascii", "\t\n  spaces  and\nnewlines\n", "日本語 ✓"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def checkpoint(request, tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("hf") / request.param, request.param, seed=1)


def test_tiny_checkpoint_tokenizer_is_the_byte_tokenizer_with_chatml(checkpoint):
    model = HFCausalLM.from_pretrained(checkpoint)
    check_chat_template(model.tokenizer)
    tok = load_tokenizer(checkpoint)  # the agent's view of the same files
    for text in TEXTS:
        assert tok.encode(text) == TOK.encode(text) == model.tokenizer.encode(text, add_special_tokens=False)
        assert tok.decode(tok.encode(text)) == text
    assert tok.eos_token_id == TOK.token_id("<|im_end|>")
    assert model.config.architectures[0] == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[
        checkpoint.name]
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in model.hf.named_parameters()}


def test_sampler_logprobs_are_the_learners(checkpoint):
    model = HFCausalLM.from_pretrained(checkpoint)
    prompts = [TOK.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"), TOK.encode("ab")]
    for temperature in (1.0, 0.6):
        gens = model.generate(prompts, SamplingConfig(max_new_tokens=10, temperature=temperature, seed=2))
        for prompt, gen in zip(prompts, gens):  # left-padded batch: the shorter prompt is scored unpadded
            ids = torch.tensor([prompt + gen.token_ids])
            with torch.no_grad():
                ref = model.token_logprobs(ids, temperature=temperature)[0, len(prompt):]
            assert ref.tolist() == pytest.approx(gen.logprobs, abs=1e-5)
    sampled = SamplingConfig(max_new_tokens=10, temperature=1.0)  # per-row seeds: alone or batched, same tokens
    assert [g.token_ids for g in model.generate(prompts, sampled, seeds=[7, 8])] == \
        [model.generate([p], sampled, seeds=[s])[0].token_ids for p, s in zip(prompts, [7, 8])]
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0)
    batched = model.generate(prompts, greedy)
    assert [g.token_ids for g in batched] == [model.generate([p], greedy)[0].token_ids for p in prompts]
    stop = batched[0].token_ids[2]
    cut = model.generate(prompts[:1], SamplingConfig(max_new_tokens=6, temperature=0.0, stop_token_ids=(stop,)))[0]
    assert cut.token_ids == batched[0].token_ids[:3] and cut.finish_reason == "stop"


def test_learner_step_checkpoint_and_save_pretrained(checkpoint, tmp_path):
    model = HFCausalLM.from_pretrained(checkpoint)
    learner = Learner(model, CISPOLoss(), LearnerConfig(lr=1e-2, eps=1e-8, minibatches=1))
    ids = [TOK.encode("<|im_start|>assistant\nok"), TOK.encode("<|im_start|>assistant\nno!")]
    masks = [[0] * 13 + [1] * (len(x) - 13) for x in ids]
    with torch.no_grad():
        logps = [model.token_logprobs(torch.tensor([x]))[0].tolist() for x in ids]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = learner.step(TrainBatch.from_sequences(ids, masks, logps, [1.0, -1.0]))
    assert metrics["policy_tokens"] == sum(map(sum, masks)) and "entropy" in metrics
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    save_checkpoint(tmp_path / "ckpt", step=1, model=model, optimizer=learner.optimizer)
    resumed = HFCausalLM.from_pretrained(checkpoint)
    load_checkpoint(tmp_path / "ckpt", model=resumed, optimizer=Learner(resumed, CISPOLoss()).optimizer)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in model.state_dict().items())

    model.save_pretrained(tmp_path / "final")  # the transformers layout, tokenizer and template included
    again = HFCausalLM.from_pretrained(f"hf:{tmp_path / 'final'}")
    check_chat_template(again.tokenizer)
    x = torch.tensor([ids[1]])
    with torch.no_grad():
        assert torch.equal(again.token_logprobs(x), model.token_logprobs(x))


def test_hf_policy_spec(checkpoint):
    assert split_spec(f"hf:{checkpoint}?max_batch=2") == ("hf", str(checkpoint), {"max_batch": 2})
    assert tokenizer_path(f"hf:{checkpoint}") == str(checkpoint) == tokenizer_path(f"vllm:hf:{checkpoint}")
    assert tokenizer_path("model:tiny") is None
    policy = make_policy(f"hf:{checkpoint}?max_batch=2", tokenizer=load_tokenizer(checkpoint))
    assert isinstance(policy, ModelPolicy) and policy.name == f"hf:{checkpoint}" and policy.max_batch == 2


def test_bad_checkpoints_are_refused_with_the_fix(tmp_path, checkpoint):
    with pytest.raises(UserInputError, match="no config.json"):
        hf_path(f"hf:{tmp_path}")
    model = HFCausalLM.from_pretrained(checkpoint)
    model.tokenizer.chat_template = ("{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    with pytest.raises(UserInputError, match="not ChatML"):
        check_chat_template(model.tokenizer)
    model.tokenizer.chat_template = None
    with pytest.raises(UserInputError, match="no chat template"):
        check_chat_template(model.tokenizer)
