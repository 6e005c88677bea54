"""Run under the vLLM interpreter by tests/agent/test_vllm.py: the in-process ``vllm:`` engine and the weight
push, against the learner, on one tiny transformers checkpoint. Prints one JSON line (the measurements).

    python tests/agent/vllm_engine_check.py CKPT_DIR hf|minimax [TEMPERATURE]

1. ``VLLMPolicy("hf:CKPT")`` (a transformers checkpoint), or ``VLLMPolicy(CKPT)`` for a lightswe MiniMax checkpoint
   served by the plugin (``lightswe.model.vllm_plugin``), samples ChatML prompts built by the agent's glue; its
   sampler log-probs are compared with the learner's (``HFCausalLM`` / ``MiniMaxForCausalLM``) ``token_logprobs``
   of the same tokens at the same temperature.
2. One real CISPO learner step on those samples changes the learner's weights; ``push_weights`` loads them into
   the running engine; new samples' log-probs are compared with the updated learner's, and with the old
   weights' (which they must no longer match).
3. Four threads (episodes) call ``generate`` at once, each with its own budget and seed: all finish, with
   their own budgets, the learner's log-probs, and fewer engine calls than requests.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def max_diff(model, prompts, samples, temperature: float) -> float:
    worst = 0.0
    for prompt, (tokens, logprobs) in zip(prompts, samples):
        ids = torch.tensor([list(prompt) + list(tokens)])
        with torch.no_grad():
            ref = model.token_logprobs(ids, temperature=temperature)[0, len(prompt):]
        worst = max(worst, float((ref - torch.tensor(logprobs)).abs().max()))
    return worst


def main(checkpoint: str, kind: str = "hf", temperature: float = 0.8) -> dict:
    t0 = time.perf_counter()
    from lightswe.agent.policies.vllm_engine import VLLMPolicy

    if kind == "minimax":
        from lightswe.model.vllm_plugin import register

        register()  # in-process engine: the entry point is not needed
        policy = VLLMPolicy(checkpoint, dtype="float32", max_model_len=1024, enforce_eager=True, seed=0,
                            skip_tokenizer_init=True)
    else:
        policy = VLLMPolicy(f"hf:{checkpoint}", dtype="float32", max_model_len=1024, enforce_eager=True, seed=0)
    start_s = time.perf_counter() - t0

    from lightswe.agent.cispo import CISPOLoss
    from lightswe.agent.learner import Learner, LearnerConfig, TrainBatch
    from lightswe.agent.policies.base import SamplingParams
    from lightswe.model import MiniMaxForCausalLM, load_tokenizer
    from lightswe.model.hf import HFCausalLM
    from vllm_support import chat_prompts  # beside this script (sys.path[0])

    def learner_model():
        if kind == "minimax":
            return MiniMaxForCausalLM.from_pretrained(checkpoint)
        return HFCausalLM.from_pretrained(checkpoint)

    tokenizer = load_tokenizer(None if kind == "minimax" else checkpoint)
    prompts = chat_prompts(tokenizer, 4)
    sampling = SamplingParams(max_new_tokens=48, temperature=temperature, stop_token_ids=[tokenizer.token_id(
        "<|im_end|>")], seed=1)
    policy.generate_batch(prompts[:1], sampling)  # warm-up (first call compiles)
    t1 = time.perf_counter()
    samples = policy.generate_batch(prompts, sampling)
    gen_s = time.perf_counter() - t1
    tokens = sum(len(t) for t, _ in samples)

    model = learner_model()
    before = max_diff(model, prompts, samples, temperature)

    old = learner_model()
    learner = Learner(model, CISPOLoss(), LearnerConfig(lr=5e-2, eps=1e-8, minibatches=1,
                                                                temperature=temperature))
    rows = [list(p) + list(t) for p, (t, _) in zip(prompts, samples)]
    masks = [[0] * len(p) + [1] * len(t) for p, (t, _) in zip(prompts, samples)]
    logps = [[0.0] * len(p) + list(lp) for p, (_, lp) in zip(prompts, samples)]
    metrics = learner.step(TrainBatch.from_sequences(rows, masks, logps, [1.0, -1.0, 1.0, -1.0]))
    t2 = time.perf_counter()
    policy.push_weights(model)
    push_s = time.perf_counter() - t2
    after_samples = policy.generate_batch(prompts, sampling)
    after = max_diff(model, prompts, after_samples, temperature)
    stale = max_diff(old, prompts, after_samples, temperature)

    # episodes call generate from their own threads: one engine call serves them, each gets its own sample
    import threading

    threaded: list = [None] * len(prompts)
    policy.batch_sizes.clear()

    def episode(i: int) -> None:
        threaded[i] = policy.generate(prompts[i], SamplingParams(max_new_tokens=16 + i, temperature=temperature,
                                                                 seed=100 + i))

    threads = [threading.Thread(target=episode, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in threads]
    [t.join(timeout=300) for t in threads]
    threaded_ok = all(s is not None and len(s[0]) == 16 + i for i, s in enumerate(threaded))
    threaded_diff = max_diff(model, prompts, threaded, temperature) if threaded_ok else None
    return {"start_seconds": start_s, "tokens": tokens, "tokens_per_second": tokens / gen_s,
            "max_abs_logprob_diff": before, "max_abs_logprob_diff_after_push": after,
            "max_abs_logprob_diff_vs_old_weights": stale, "push_seconds": push_s, "loss": metrics["loss"],
            "threaded_ok": threaded_ok, "threaded_max_abs_logprob_diff": threaded_diff,
            "threaded_batch_sizes": policy.batch_sizes,
            "samples": [list(map(int, t)) for t, _ in samples], "prompts": prompts,
            "vocab_size": model.config.vocab_size}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], *map(float, sys.argv[3:]))))
