"""vLLM in-process (``vllm.LLM``) as a policy: token ids in, token ids and sampled log-probs out.

Needs the ``vllm`` extra (``pip install 'lightswe[vllm]'``, a CUDA machine). ``logprobs=0`` asks vLLM for the
sampled token's log-prob only; ``detokenize=False`` keeps the engine in token space.

Example::

    policy = VLLMPolicy("MiniMaxAI/MiniMax-M1-40k", tensor_parallel_size=8)
    samples = policy.generate_batch([prompt_ids], SamplingParams(max_new_tokens=512, stop_token_ids=[2]))
"""

from __future__ import annotations

from collections.abc import Sequence

from lightswe.agent.policies.base import Sample, SamplingParams, check_sample


class VLLMPolicy:
    def __init__(self, model: str, **engine_kwargs) -> None:
        try:
            import vllm
        except ImportError as err:
            raise ImportError("the vLLM backend needs vllm: pip install 'lightswe[vllm]' (CUDA machine)") from err
        self._vllm = vllm
        self.llm = vllm.LLM(model=model, **engine_kwargs)
        self.name = f"vllm:{model}"

    def _params(self, sampling: SamplingParams):
        return self._vllm.SamplingParams(
            max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            stop_token_ids=list(sampling.stop_token_ids), seed=sampling.seed, logprobs=0, detokenize=False)

    def generate(self, token_ids: Sequence[int], sampling: SamplingParams) -> Sample:
        return self.generate_batch([token_ids], sampling)[0]

    def generate_batch(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Sample]:
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                    self._params(sampling), use_tqdm=False)
        samples = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [step[token].logprob for token, step in zip(ids, completion.logprobs)]
            samples.append(check_sample((ids, logprobs), sampling))
        return samples
