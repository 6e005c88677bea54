"""Dynamic batching across episode threads, for policies whose engine takes many prompts at once: the one batcher
of :class:`~lightswe.agent.policies.model.ModelPolicy` (built-in and ``hf:`` models, off CUDA) and
:class:`~lightswe.agent.policies.vllm_engine.VLLMPolicy`.

Concurrent episodes call ``generate`` from their own threads; the first caller to get the engine takes every
waiting request its backend can share a call with (``batch_key``, up to ``max_batch``) into one ``_run``, so
episodes share forward passes without a scheduler thread. The engine is only ever entered by one thread at a
time (``vllm.LLM`` is not thread-safe: two threads stepping one engine collect each other's outputs and hang).

Subclasses implement ``_run(batch)``: fill ``request.result`` (or ``request.error``) of every request, set none
of the events (done here; an exception ``_run`` raises becomes every request's error); ``batch_key`` says which
requests may share a call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from lightswe.agent.policies.base import Sample, SamplingParams, per_prompt


@dataclass(kw_only=True, slots=True)
class Request:
    prompt: list[int]
    sampling: SamplingParams
    done: threading.Event = field(default_factory=threading.Event)
    result: Sample | None = None
    error: BaseException | None = None


class BatchingPolicy:
    """Base of batching policies: ``generate`` (one prompt, any thread) and ``generate_batch`` (many)."""

    max_batch: int = 16
    batch_wait_s: float = 0.005

    def _init_batching(self, *, max_batch: int, batch_wait_s: float) -> None:
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self._pending: list[Request] = []
        self._pending_lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # observed batch sizes (benchmarks, tests)

    def batch_key(self, sampling: SamplingParams) -> Hashable:
        """Requests with equal keys may share one ``_run`` (default: any two)."""
        return None

    def _run(self, batch: list[Request]) -> None:
        raise NotImplementedError

    def _run_guarded(self, batch: list[Request]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            self._run(batch)
        except BaseException as err:  # noqa: BLE001 - handed to every waiting caller, re-raised there
            for r in batch:
                r.error = err
        finally:
            for r in batch:
                r.done.set()

    def generate(self, token_ids: Sequence[int], sampling: SamplingParams) -> Sample:
        request = Request(prompt=list(token_ids), sampling=sampling)
        with self._pending_lock:
            self._pending.append(request)
        while not request.done.is_set():
            with self._engine_lock:
                if request.done.is_set():
                    break
                time.sleep(self.batch_wait_s)  # let concurrent episodes join this batch
                with self._pending_lock:
                    key = self.batch_key(request.sampling)
                    batch = [r for r in self._pending if self.batch_key(r.sampling) == key][: self.max_batch]
                    if request not in batch:
                        batch = [request, *batch[: self.max_batch - 1]]
                    for r in batch:
                        self._pending.remove(r)
                self._run_guarded(batch)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def generate_batch(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Sample]:
        requests = [Request(prompt=list(p), sampling=s) for p, s in zip(prompts, per_prompt(sampling, len(prompts)))]
        with self._engine_lock:
            for start in range(0, len(requests), self.max_batch):
                self._run_guarded(requests[start:start + self.max_batch])
        for r in requests:
            if r.error is not None:
                raise r.error
        return [r.result for r in requests]
