"""The built-in model (``lightswe.model``) as a policy, with dynamic batching across episode threads.

Concurrent episodes call ``generate`` from their own threads; the first caller to get the model takes every
waiting request with the same sampling settings (up to ``max_batch``) into one ``model.generate`` call, so
episodes share forward passes without a scheduler thread.

Example::

    policy = ModelPolicy.from_spec("tiny")          # random tiny weights (tests), or a checkpoint directory
    tokens, logprobs = policy.generate(prompt_ids, SamplingParams(max_new_tokens=32, stop_token_ids=[258]))
"""

from __future__ import annotations

from pathlib import Path

from lightswe.agent.policies.base import SamplingParams, check_sample
from lightswe.agent.policies.batching import BatchingPolicy, Request


class ModelPolicy(BatchingPolicy):
    def __init__(self, model, *, name: str = "model", max_batch: int = 16, batch_wait_s: float = 0.005,
                 version: int = 0) -> None:
        self.model, self.name, self.version = model, name, version
        self._init_batching(max_batch=max_batch, batch_wait_s=batch_wait_s)

    def batch_key(self, s: SamplingParams) -> tuple:
        """Requests that may share a forward pass: same distribution and stops. Budgets may differ (each result
        is cut to its own); the batch samples with its first request's seed, so a seed reproduces a request only
        when it runs alone."""
        return s.temperature, s.top_p, tuple(s.stop_token_ids)

    @classmethod
    def from_spec(cls, spec: str, *, device: str = "cpu", seed: int = 0, **kwargs) -> ModelPolicy:
        """``spec``: a preset name (random weights from ``seed``) or a checkpoint directory."""
        from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

        if Path(spec).is_dir():
            model = MiniMaxForCausalLM.from_pretrained(spec, device=device)
        else:
            model = MiniMaxForCausalLM(MiniMaxConfig.preset(spec)).to(device)
            model.init_weights(seed=seed)
        return cls(model, name=f"model:{spec}", **kwargs)

    def _run(self, batch: list[Request]) -> None:
        from lightswe.model import SamplingConfig

        s = batch[0].sampling
        config = SamplingConfig(max_new_tokens=max(r.sampling.max_new_tokens for r in batch), temperature=s.temperature,
                                top_p=s.top_p, stop_token_ids=tuple(s.stop_token_ids), seed=s.seed)
        generations = self.model.generate([r.prompt for r in batch], config)
        for r, g in zip(batch, generations, strict=True):
            r.result = check_sample((g.token_ids, g.logprobs), r.sampling)  # each request's own budget
