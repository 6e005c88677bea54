"""The policy interface: token ids in, sampled token ids and their log-probs out.

Every backend (scripted, built-in model, OpenAI-compatible server, vLLM in-process) implements
``generate``; ``generate_batch`` has a sequential default that batching backends override.

Example::

    class Echo:
        name = "echo"
        def generate(self, token_ids, sampling):
            return [sampling.stop_token_ids[0]], [0.0]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from lightswe.agent.early_stop import EarlyStopConfig
from lightswe.agent.trajectory import MAX_LOGPROB
from lightswe.errors import InfrastructureError, LightSWEError, NonFiniteError, UserInputError


@dataclass(kw_only=True, slots=True)
class SamplingParams:
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)  # the stop token is kept in the output
    seed: int | None = None  # this request's own random stream (>= 0): its tokens do not depend on batch-mates
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)  # backends that stream may stop sooner

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UserInputError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise UserInputError(f"seed must be >= 0 (or None: unseeded), got {self.seed}")


Sample = tuple[list[int], list[float]]  # (generated token ids, sampler log-prob of each)


@runtime_checkable
class Policy(Protocol):
    name: str

    def generate(self, token_ids: Sequence[int], sampling: SamplingParams) -> Sample: ...


def generate_batch(policy: Policy, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Sample]:
    """Use the backend's batched path when it has one. A seeded ``sampling`` seeds prompt i with
    ``row_seed(sampling.seed, i)`` (``per_prompt``), so equal prompts still get independent samples."""
    batched = getattr(policy, "generate_batch", None)
    if batched is not None:
        return batched(prompts, sampling)
    return [policy.generate(p, s) for p, s in zip(prompts, per_prompt(sampling, len(prompts)))]


def per_prompt(sampling: SamplingParams, count: int) -> list[SamplingParams]:
    """``count`` copies of ``sampling``, copy i seeded ``row_seed(sampling.seed, i)`` (NumPy's SeedSequence spawn,
    ``lightswe.model.generation.row_seed``) when ``sampling.seed`` is set: the rows of one batched call."""
    if sampling.seed is None:
        return [sampling] * count
    from lightswe.model.generation import row_seed

    return [replace(sampling, seed=row_seed(sampling.seed, i)) for i in range(count)]


class SampleError(InfrastructureError, ValueError):
    """A backend returned a sample the learner cannot train on (token ids and log-probs of different lengths, a
    log-prob that is NaN, infinite or above 0, a token id that is not a non-negative integer): the sampler's or the
    server's fault, never the policy's choice. The loop ends the episode as ``sandbox_error`` (reward None) before
    the sample enters the trajectory, so no such value is ever stored or trained on."""


class NonFiniteSample(SampleError, NonFiniteError):
    """A sample whose log-prob is NaN or infinite (a sampler's or server's numerical failure: non-finite logits):
    both a :class:`SampleError` and the package's one class for the kind, :class:`~lightswe.errors.NonFiniteError`
    (what the built-in samplers raise before sampling from such logits)."""


class ContextWindowExceeded(LightSWEError):
    """The prompt, with room for at least one new token, does not fit in the serving engine's context window
    (vLLM's ``max_model_len``). Not an infrastructure failure by itself: the loop ends the episode as
    ``context_limit`` when the policy's own turns (and the tool outputs they asked for) filled the window, and as
    ``sandbox_error`` when the harness's first prompt alone does not fit (rLLM's MAX_PROMPT_LENGTH_EXCEEDED
    termination is the same split)."""




def check_sample(sample: Sample, sampling: SamplingParams) -> Sample:
    """Backends' shared post-condition: equal lengths, each token id an int >= 0, each log-prob finite and <= 0
    (within ``MAX_LOGPROB``, the trajectory store's bound), within budget, cut at the first stop token. The loop
    applies it to every backend's sample.

    Raises:
        SampleError: naming what was wrong (an :class:`InfrastructureError`: the episode is not scored);
            :class:`NonFiniteSample` (also a :class:`~lightswe.errors.NonFiniteError`) for a NaN/inf log-prob.
    """
    tokens, logprobs = list(sample[0]), list(sample[1])
    if len(tokens) != len(logprobs):
        raise SampleError(f"the sampler returned {len(tokens)} tokens but {len(logprobs)} log-probs; the learner "
                          "needs one log-prob per generated token; fix: see the sampler's or server's log (a server "
                          "must answer `logprobs: 1` with one log-prob per token)")
    for i, (token, value) in enumerate(zip(tokens, logprobs)):
        if isinstance(token, bool) or not isinstance(token, numbers.Integral) or token < 0:
            raise SampleError(f"the sampler returned token id {token!r} at position {i}: not an integer >= 0; "
                              "fix: see the sampler's or server's log (the tokenizer's ids are ints >= 0)")
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
            raise NonFiniteSample(f"the sampler returned log-prob {value!r} for token {i}: a log-probability must be "
                                  "finite and <= 0 (a NaN/inf is a numerical failure of the sampler: non-finite "
                                  "logits); fix: check the weights it loaded (a diverged or damaged checkpoint gives "
                                  "NaN; an overflow in bf16/fp16 gives inf) and its log")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value > MAX_LOGPROB:
            raise SampleError(f"the sampler returned log-prob {value!r} for token {i}: a log-probability must be "
                              "finite and <= 0 (a NaN/inf is a numerical failure of the sampler); fix: check the "
                              "weights it loaded (a diverged or damaged checkpoint gives NaN) and its log")
    for i, token in enumerate(tokens):
        if token in sampling.stop_token_ids:
            tokens, logprobs = tokens[: i + 1], logprobs[: i + 1]
            break
    cut = sampling.max_new_tokens
    return [int(t) for t in tokens[:cut]], [float(x) for x in logprobs[:cut]]
