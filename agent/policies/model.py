"""The built-in model (``lightswe.model``) or a transformers one (``hf:``) as a policy, batched across episode threads.

Concurrent episodes call ``generate`` from their own threads; batching is :class:`BatchingPolicy`'s (the one
batcher, shared with the vLLM policy): the first caller to get the model takes every waiting request with the
same sampling settings (:meth:`ModelPolicy.batch_key`, up to ``max_batch``) into one ``model.generate`` call, so
episodes share forward passes without a scheduler thread. Each request samples with its own seed (its own
generator): its tokens do not depend on which requests shared its batch. Which requests share a batch depends on
thread timing, and a row's floating-point values on its batch-mates in the last bits (CPU matrix-product kernels
block by the number of rows); ``batch_invariant=True`` runs every request as a batch of one instead, so that a
seeded request gives the same tokens and bit-identical log-probs whatever ran beside it (what makes a training
run reproducible from its seed; "batch invariance" as in vLLM's ``VLLM_BATCH_INVARIANT``).

On CUDA the policy batches continuously instead (``lightswe.model.engine.SamplerEngine``): whichever waiting
caller holds the model runs one decode step at a time, and requests that arrive in the meantime join the
running batch at the next step (any sampling settings may share it: temperature, top-p and stops are per row),
so a slow episode never holds the others back.

Example::

    policy = ModelPolicy.from_spec("tiny")          # random tiny weights (tests), or a checkpoint directory
    tokens, logprobs = policy.generate(prompt_ids, SamplingParams(max_new_tokens=32, stop_token_ids=[258]))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightswe.agent.policies.base import (NonFiniteSample, Sample, SampleError, SamplingParams, check_sample,
                                          per_prompt)
from lightswe.agent.policies.batching import BatchingPolicy, Request
from lightswe.errors import NonFiniteError


class ModelPolicy(BatchingPolicy):
    def __init__(self, model, *, name: str = "model", max_batch: int = 16, batch_wait_s: float = 0.005,
                 version: int = 0, continuous: bool | None = None, autocast_dtype: str | None = "auto",
                 batch_invariant: bool = False) -> None:
        """``continuous``: batch continuously through ``SamplerEngine`` (default: when the model is on CUDA);
        ``autocast_dtype``: the engine's mixed precision, the learner's ``LearnerConfig.autocast_dtype`` when it
        samples from the learner's module (``SamplerEngine``'s argument; ``"auto"`` follows the weights' dtype);
        ``batch_invariant``: off the continuous engine, sample each request alone (see the module docs; costs
        the batching, ~2.5x the sampling time of the tiny model at 4 episodes in flight on CPU). The continuous
        engine ignores it: on CUDA a seed fixes a request's random draws, not its batch-mates' effect on the
        numerics."""
        self.model, self.name, self.version = model, name, version
        self.autocast_dtype = autocast_dtype
        self.continuous = continuous
        self.batch_invariant = batch_invariant
        self._init_batching(max_batch=max_batch, batch_wait_s=batch_wait_s)
        self._inflight: dict[int, Request] = {}  # engine request id -> request (CUDA, continuous batching)

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

    def batch_key(self, sampling: SamplingParams) -> tuple:
        """Requests that may share a forward pass: same distribution and stops. Budgets and seeds may differ
        (each result is cut to its own budget; each row samples with its own request's seed)."""
        return sampling.temperature, sampling.top_p, tuple(sampling.stop_token_ids)

    def generate(self, token_ids: Sequence[int], sampling: SamplingParams) -> Sample:
        if not self._continuous():
            return super().generate(token_ids, sampling)
        request = Request(prompt=list(token_ids), sampling=sampling)
        with self._pending_lock:
            self._pending.append(request)
        return self._generate_continuous(request)

    def generate_batch(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Sample]:
        if not self._continuous():
            return super().generate_batch(prompts, sampling)
        requests = [Request(prompt=list(p), sampling=s)  # all join the running batch;
                    for p, s in zip(prompts, per_prompt(sampling, len(prompts)))]
        with self._pending_lock:  # each call below drives it until its own request is done
            self._pending.extend(requests)
        return [self._generate_continuous(r) for r in requests]

    def _continuous(self) -> bool:
        if self.continuous is not None:
            return self.continuous
        return next(self.model.parameters()).device.type == "cuda"

    def _generate_continuous(self, request: Request) -> Sample:
        """Drive the shared engine one step at a time until this request is done (see the module docstring)."""
        while not request.done.is_set():
            with self._engine_lock:
                if request.done.is_set():
                    break
                with self._pending_lock:
                    waiting, self._pending = self._pending, []
                try:
                    self._continuous_step(waiting)
                except BaseException as err:  # noqa: BLE001 - handed to every request taken, re-raised there
                    self.model._sampler_engine = None
                    for r in [*self._inflight.values(), *waiting]:
                        if not r.done.is_set() and r not in self._pending:
                            r.error = err
                            r.done.set()
                    self._inflight.clear()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _continuous_step(self, waiting: list[Request]) -> None:
        """Add the waiting requests to the engine (sized for them when idle), run one step, hand out results."""
        from lightswe.model import SamplingConfig
        from lightswe.model.generation import engine_for, non_finite_rows_error

        engine = getattr(self.model, "_sampler_engine", None)
        need = max((len(r.prompt) + r.sampling.max_new_tokens for r in waiting), default=0)
        if engine is None or not engine.has_work():  # idle: (re)size it for what is waiting
            engine = engine_for(self.model, self.max_batch, max(need, 1), max_slots=self.max_batch,
                                autocast_dtype=self.autocast_dtype)
        for r in waiting:
            if len(r.prompt) + r.sampling.max_new_tokens > engine.max_seq_len:
                with self._pending_lock:  # longer than this engine holds: taken once it is idle again
                    self._pending.append(r)
                continue
            s = r.sampling
            try:
                rid = engine.add(r.prompt, SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                                          top_p=s.top_p, stop_token_ids=tuple(s.stop_token_ids),
                                                          seed=s.seed))
            except ValueError as err:  # this request's own fault (e.g. a token id outside the vocabulary)
                r.error = err
                r.done.set()
                continue
            self._inflight[rid] = r
        if engine.has_work():
            finished = engine.step()
            if engine.stats.occupancy:
                self.batch_sizes.append(engine.stats.occupancy[-1])
            for rid, generation in finished:
                r = self._inflight.pop(rid)
                try:
                    if generation.finish_reason == "error":  # the engine flagged non-finite logits in this row
                        raise NonFiniteSample(str(non_finite_rows_error(
                            1, 1, f"this request, at token {len(generation.token_ids)}", where="the sampler engine")))
                    r.result = check_sample((generation.token_ids, generation.logprobs), r.sampling)
                except SampleError as err:  # this request's sample only (a NaN log-prob): not its batch-mates'
                    r.error = err
                r.done.set()

    def _run(self, batch: list[Request]) -> None:
        """One ``model.generate`` over ``batch`` (requests of one :meth:`batch_key`), with their shared sampling
        settings, each request's own seed and the largest budget; each result is cut to its own request's budget.
        With ``batch_invariant`` one call per request, with its own budget."""
        from lightswe.model import SamplingConfig

        s = batch[0].sampling
        groups = [[r] for r in batch] if self.batch_invariant else [batch]
        for group in groups:
            config = SamplingConfig(max_new_tokens=max(r.sampling.max_new_tokens for r in group),
                                    temperature=s.temperature, top_p=s.top_p, stop_token_ids=tuple(s.stop_token_ids))
            try:
                generations = self.model.generate([r.prompt for r in group], config,
                                                  seeds=[r.sampling.seed for r in group])
            except NonFiniteError as err:  # a row's logits broke down: only the requests whose own logits did fail
                if len(group) == 1:  # the request's own sample error, as a server's NaN log-prob is
                    group[0].error = err if isinstance(err, SampleError) else NonFiniteSample(str(err))
                else:  # run each alone (a seeded request's tokens do not depend on its batch-mates)
                    for r in group:
                        self._run([r])
                continue
            for r, g in zip(group, generations, strict=True):
                try:
                    r.result = check_sample((g.token_ids, g.logprobs), r.sampling)  # each request's own budget
                except SampleError as err:  # this request's sample only: its batch-mates keep theirs
                    r.error = err

