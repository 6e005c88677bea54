"""The built-in model (``lightswe.model``) as a policy, with dynamic batching across episode threads.

Concurrent episodes call ``generate`` from their own threads; the first caller to get the model takes every
waiting request with the same sampling settings (up to ``max_batch``) into one ``model.generate`` call, so
episodes share forward passes without a scheduler thread.

On CUDA the policy batches continuously instead (``lightswe.model.engine.SamplerEngine``): whichever waiting
caller holds the model runs one decode step at a time, and requests that arrive in the meantime join the
running batch at the next step (any sampling settings may share it: temperature, top-p and stops are per row),
so a slow episode never holds the others back.

Example::

    policy = ModelPolicy.from_spec("tiny")          # random tiny weights (tests), or a checkpoint directory
    tokens, logprobs = policy.generate(prompt_ids, SamplingParams(max_new_tokens=32, stop_token_ids=[258]))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightswe.agent.policies.base import Sample, SamplingParams, check_sample


def _batch_key(s: SamplingParams) -> tuple:
    """Requests that may share a forward pass: same distribution and stops. Budgets may differ (each result is
    cut to its own); the batch samples with its first request's seed, so a seed reproduces a request only
    when it runs alone."""
    return s.temperature, s.top_p, tuple(s.stop_token_ids)


@dataclass(kw_only=True, slots=True)
class _Request:
    prompt: list[int]
    sampling: SamplingParams
    done: threading.Event = field(default_factory=threading.Event)
    result: Sample | None = None
    error: BaseException | None = None


class ModelPolicy:
    def __init__(self, model, *, name: str = "model", max_batch: int = 16, batch_wait_s: float = 0.005,
                 version: int = 0, continuous: bool | None = None) -> None:
        """``continuous``: batch continuously through ``SamplerEngine`` (default: when the model is on CUDA)."""
        self.model, self.name, self.version = model, name, version
        self.continuous = continuous
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self._pending: list[_Request] = []
        self._pending_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # observed batch sizes (benchmarks, tests)
        self._inflight: dict[int, _Request] = {}  # engine request id -> request (CUDA, continuous batching)

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

    def generate(self, token_ids: Sequence[int], sampling: SamplingParams) -> Sample:
        request = _Request(prompt=list(token_ids), sampling=sampling)
        with self._pending_lock:
            self._pending.append(request)
        if self._continuous():
            return self._generate_continuous(request)
        while not request.done.is_set():
            with self._model_lock:
                if request.done.is_set():
                    break
                time.sleep(self.batch_wait_s)  # let concurrent episodes join this batch
                with self._pending_lock:
                    key = _batch_key(request.sampling)
                    batch = [r for r in self._pending if _batch_key(r.sampling) == key][: self.max_batch]
                    if request not in batch:
                        batch = [request, *batch[: self.max_batch - 1]]
                    for r in batch:
                        self._pending.remove(r)
                self._run(batch)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def generate_batch(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Sample]:
        if self._continuous():  # all join the running batch; each call below drives until its request is done
            requests = [_Request(prompt=list(p), sampling=sampling) for p in prompts]
            with self._pending_lock:
                self._pending.extend(requests)
            return [self._generate_continuous(r) for r in requests]
        with self._model_lock:
            requests = [_Request(prompt=list(p), sampling=sampling) for p in prompts]
            for start in range(0, len(requests), self.max_batch):
                self._run(requests[start:start + self.max_batch])
        for r in requests:
            if r.error is not None:
                raise r.error
        return [r.result for r in requests]

    def _continuous(self) -> bool:
        if self.continuous is not None:
            return self.continuous
        return next(self.model.parameters()).device.type == "cuda"

    def _generate_continuous(self, request: _Request) -> Sample:
        """Drive the shared engine one step at a time until this request is done (see the module docstring)."""
        while not request.done.is_set():
            with self._model_lock:
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

    def _continuous_step(self, waiting: list[_Request]) -> None:
        """Add the waiting requests to the engine (sized for them when idle), run one step, hand out results."""
        from lightswe.model import SamplingConfig
        from lightswe.model.generation import engine_for

        engine = getattr(self.model, "_sampler_engine", None)
        need = max((len(r.prompt) + r.sampling.max_new_tokens for r in waiting), default=0)
        if engine is None or not engine.has_work():  # idle: (re)size it for what is waiting
            engine = engine_for(self.model, self.max_batch, max(need, 1), max_slots=self.max_batch)
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
                r.result = check_sample((generation.token_ids, generation.logprobs), r.sampling)
                r.done.set()

    def _run(self, batch: list[_Request]) -> None:
        from lightswe.model import SamplingConfig

        s = batch[0].sampling
        config = SamplingConfig(max_new_tokens=max(r.sampling.max_new_tokens for r in batch), temperature=s.temperature,
                                top_p=s.top_p, stop_token_ids=tuple(s.stop_token_ids), seed=s.seed)
        self.batch_sizes.append(len(batch))
        try:
            generations = self.model.generate([r.prompt for r in batch], config)
            for r, g in zip(batch, generations, strict=True):
                r.result = check_sample((g.token_ids, g.logprobs), r.sampling)  # each request's own budget
        except BaseException as err:  # noqa: BLE001 - handed to every waiting caller, re-raised there
            for r in batch:
                r.error = err
        finally:
            for r in batch:
                r.done.set()
