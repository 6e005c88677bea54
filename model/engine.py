"""The GPU sampler: a static cache, continuous batching, a decode step without host syncs, CUDA graphs.

``SamplerEngine`` keeps ``max_slots`` rows of decoding state in preallocated tensors (``StaticCache``: the fp32
lightning states, the softmax layers' keys and values up to ``max_seq_len`` tokens, the lengths). Requests
wait in a queue; whenever slots are free, the waiting prompts are prefilled together (packed, through the same
``hidden_states`` path the learner uses) and their states copied into the free slots, so new requests join
the running batch as others finish (continuous batching, as in vLLM: Kwon et al., "Efficient Memory
Management for Large Language Model Serving with PagedAttention", 2023; Yu et al., "Orca", OSDI 2022).

One decode step (``_decode``) runs every slot: embedding, the layers (lightning decode kernel in place on the
state; softmax attention through ``lightswe.kernels.decode_attn`` over each row's own length; the MoE with the
experts' weights stacked so all experts run as three batched matrix products), the fp32 LM head, then sampling
on the GPU (temperature and top-p per row; exponential-race sampling, which draws from the same distribution
as ``torch.multinomial``; the noise is ``counter_noise`` of the row's seed and the token's position, computed
inside the step, so a row's draws do not depend on the other rows and cost no host work), and the bookkeeping (tokens and log-probs written into per-row output buffers,
stop / length checks, lengths advanced for active rows only). Nothing in it reads a value on the host, so on
CUDA the whole step is captured once into a CUDA graph and replayed. The host reads one small tensor (which
rows finished) per step, one step late: step t+1 is queued before step t's flags are read, so the GPU never
waits for Python.

The sampled token's log-prob is the fp32 log-softmax of logits / temperature (before top-p; temperature 0:
greedy, log-prob under the plain softmax), the same quantity ``MiniMaxForCausalLM.score(...,
temperature=T)`` gives the learner. To make the two agree in bf16 (issue 16: mean |diff| <= 1e-3), the engine
computes what the learner computes, not merely the same function: the learner's mixed precision
(``autocast_dtype``: bf16 matrix products, fp32 residual stream, norms and MoE combination, fp32 head), the
compiled regions with eager's intermediate rounding (inductor's ``emulate_precision_casts``), and the lightning
layers in the chunk kernel's form (``lightning_attn_decode_chunk_form``: the learner's full-sequence kernel
rounds its fp32 state and its in-chunk scores to bf16; a plain fp32 recurrence differs from it in ~20-40% of
the output elements, the chunk form in <0.01%). ``benchmarks/logprob_layers.py`` shows where the rest comes from.

The CPU path of ``lightswe.model.generate`` does not use this engine (its behaviour there is unchanged); the
engine runs on CPU too (no graphs; reference attention), which is how its tests run in CI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from lightswe.errors import UserInputError
from lightswe.kernels.decode_attn import decode_attention
from lightswe.kernels.lightning_attn import lightning_attn_decode
from lightswe.kernels.lightning_attn.api import _use_triton
from lightswe.kernels.lightning_attn.decode import LOG2E, lightning_attn_decode_chunk_form
from lightswe.model.config import LIGHTNING, SOFTMAX
from lightswe.model.generation import (Generation, SamplingConfig, counter_noise, non_finite_rows_error,
                                       nonfinite_rows, row_seeds, scale_logits)
from lightswe.model.layers import LightningAttention, SoftmaxAttention, rotary
from lightswe.model.model import fp32_head

if TYPE_CHECKING:
    from lightswe.model.model import MiniMaxForCausalLM

MAX_STOPS = 8  # stop token ids per request
# Chunk length of the learner's lightning forward (kernels/lightning_attn/chunk.py: BT of every autotuned config)
# that the chunk-form decode step mirrors.
CHUNK = 64


class StaticCache:
    """Preallocated decoding state for ``slots`` rows of up to ``max_seq_len`` tokens each.

    states: [n_lightning_layers, slots, H, D, D] fp32 (on CUDA without ``chunk`` stored V-major, each head's
    matrix transposed in memory: the exact decode step's faster layout, ``decode.is_v_major``); keys, values: [n_softmax_layers, slots, KVH, max_seq_len,
    D] in the model's dtype; lengths: [slots] int32 (tokens cached per row). Addresses never change, so a
    captured CUDA graph stays valid.
    """

    def __init__(self, model: MiniMaxForCausalLM, slots: int, max_seq_len: int,
                 kv_dtype: torch.dtype | None = None, chunk: int = 0) -> None:
        """``kv_dtype``: the keys' and values' dtype (default: the model's). ``chunk`` > 0: the lightning layers
        decode in the chunk kernel's form (``lightning_attn_decode_chunk_form``): ``states`` then hold each row's
        state at the start of its current chunk, rounded_states the same rounded to ``kv_dtype`` (what the step
        reads inside a chunk: half the bytes), and chunk_keys, chunk_values [n_lightning_layers, slots, H, chunk,
        D] (in ``kv_dtype``) the chunk's tokens so far."""
        c = model.config
        weight = model.lm_head.weight
        self.slots, self.max_seq_len = slots, max_seq_len
        self.lightning_layers = [i for i, t in enumerate(c.attn_type_list) if t == LIGHTNING]
        self.softmax_layers = [i for i, t in enumerate(c.attn_type_list) if t == SOFTMAX]
        self.index = {layer: i for group in (self.lightning_layers, self.softmax_layers) for i, layer in
                      enumerate(group)}
        dev = weight.device
        self.states = torch.zeros(len(self.lightning_layers), slots, c.num_attention_heads, c.head_dim, c.head_dim,
                                  device=dev, dtype=torch.float32)
        if not chunk and dev.type == "cuda":  # the exact step's faster layout (decode.is_v_major), the same bits
            self.states = self.states.transpose(-1, -2)
        kv_shape = (len(self.softmax_layers), slots, c.num_key_value_heads, max_seq_len, c.head_dim)
        self.keys = torch.zeros(kv_shape, device=dev, dtype=kv_dtype or weight.dtype)
        self.values = torch.zeros(kv_shape, device=dev, dtype=kv_dtype or weight.dtype)
        self.lengths = torch.zeros(slots, device=dev, dtype=torch.int32)
        self.chunk = chunk
        chunk_shape = (len(self.lightning_layers), slots, c.num_attention_heads, chunk, c.head_dim)
        self.chunk_keys = torch.zeros(chunk_shape if chunk else 0, device=dev, dtype=self.keys.dtype)
        self.chunk_values = torch.zeros(chunk_shape if chunk else 0, device=dev, dtype=self.keys.dtype)
        self.rounded_states = torch.zeros(self.states.shape if chunk else 0, device=dev, dtype=self.keys.dtype)
        self.state_bytes_per_row = c.num_attention_heads * c.head_dim * c.head_dim * 4 * len(self.lightning_layers)
        self.kv_bytes_per_token = 2 * len(self.softmax_layers) * c.num_key_value_heads * c.head_dim * \
            self.keys.element_size()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.states, self.keys, self.values, self.chunk_keys,
                                                           self.chunk_values, self.rounded_states))

    def state_step_bytes_per_row(self) -> float:
        """Fewest bytes of lightning state one decode step moves per row, averaged over a chunk (the bandwidth
        bound of ``benchmarks/sampler.py``). Exact step: the fp32 state read and written. Chunk form (``chunk`` =
        C): inside a chunk the rounded copy is read and the chunk's keys and values so far (on average (C - 1) / 2
        rows, plus the new token's written); once per chunk the fp32 state is read and written and the copy
        rewritten."""
        fp32 = self.state_bytes_per_row
        if not self.chunk:
            return 2.0 * fp32
        copy = fp32 * self.rounded_states.element_size() / 4
        row = self.chunk_keys.element_size() * self.chunk_keys.shape[2] * self.chunk_keys.shape[4] * \
            self.chunk_keys.shape[0]  # one token's key (or value), every lightning layer and head
        chunk_rows = 2 * row * ((self.chunk - 1) / 2 + 1)  # keys and values read, the new token's written
        return copy + chunk_rows + (2 * fp32 + copy) / self.chunk


@dataclass(kw_only=True, slots=True)
class _Request:
    rid: int
    prompt: list[int]
    sampling: SamplingConfig
    slot: int = -1
    seq: int = 0  # engine event counter at admission (orders it against the finished-flag copies)
    seed: int = 0  # the request's noise stream (``counter_noise``): its sampling seed, else one global-RNG draw
    result: Generation | None = None


@dataclass(kw_only=True, slots=True)
class EngineStats:
    steps: int = 0  # decode steps run
    prefills: int = 0  # prefill calls (each admits one or more requests)
    tokens: int = 0  # tokens generated
    occupancy: list[int] = field(default_factory=list)  # active rows per decode step


class SamplerEngine:
    """Continuous-batching sampler over a ``StaticCache``; see the module docstring.

    Example::

        engine = SamplerEngine(model, max_slots=32, max_seq_len=2048)
        gens = engine.generate(prompts, SamplingConfig(max_new_tokens=512, temperature=1.0))
        # or, request by request (other threads may add() between step() calls):
        rid = engine.add(prompt, sampling); done = engine.step()   # [(rid, Generation), ...]

    Weights are read at every step (the MoE's stacked copies are refreshed when an idle engine starts a run,
    and by ``refresh_weights()``): update the model between runs, not during one. Parameters updated in place
    (optimiser steps, ``load_state_dict``) need nothing more; replaced parameter tensors are noticed when the
    next run starts (the CUDA graphs are captured again).
    """

    @staticmethod
    def resolve_autocast(autocast_dtype: torch.dtype | str | None, weight_dtype: torch.dtype) -> torch.dtype | None:
        """The mixed precision an ``autocast_dtype`` argument means for weights of ``weight_dtype`` (see
        ``__init__``): ``"auto"`` is the weights' dtype when bf16/fp16, else None; a name such as ``"bfloat16"``
        is that torch dtype. Raises ValueError for anything but None, bf16 or fp16."""
        if isinstance(autocast_dtype, str) and autocast_dtype != "auto":
            autocast_dtype = getattr(torch, autocast_dtype, autocast_dtype)
        if autocast_dtype == "auto":
            autocast_dtype = weight_dtype if weight_dtype in (torch.bfloat16, torch.float16) else None
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise UserInputError(f"autocast_dtype must be None, 'auto', torch.bfloat16 or torch.float16, got "
                             f"{autocast_dtype!r}")
        return autocast_dtype

    def __init__(self, model: MiniMaxForCausalLM, *, max_slots: int = 32, max_seq_len: int = 4096,
                 cuda_graphs: bool = True, compile: bool | None = None,
                 autocast_dtype: torch.dtype | str | None = "auto", lightning_decode: str = "auto") -> None:
        """``compile``: run the decode step through ``torch.compile`` (fuses its ~40 small ops per layer before
        the graph is captured, keeping eager's bf16/fp16 rounding of every intermediate:
        ``emulate_precision_casts``); default on CUDA unless ``LIGHTSWE_SAMPLER_COMPILE=0``. A step that fails
        to compile falls back to the eager step (with a warning).

        ``autocast_dtype``: the learner's mixed precision (``LearnerConfig.autocast_dtype``), which prefill and
        decode reproduce: matrix products in this dtype, the residual stream, norms and MoE combination in fp32
        (what ``torch.autocast`` does to fp32 master weights), the LM head in fp32. ``"auto"`` (default): the
        weights' dtype when they are bf16/fp16 (a bf16 sampler copy of fp32 learner weights then computes what
        the learner computes, up to the rounding of the embedding and norm weights), None for fp32 weights
        (everything fp32). Pass ``torch.bfloat16`` with fp32 weights to sample as a bf16-autocast learner
        scores (the stacked expert weights are kept in bf16; the other matrices are cast at every step).
        Raises ValueError for another dtype.

        ``lightning_decode``: ``"chunk"`` decodes the lightning layers in the form of the learner's chunk kernel
        (``lightning_attn_decode_chunk_form``: its bf16 rounding of the state and of the in-chunk scores, chunks
        counted from each sequence's start), ``"exact"`` with the fp32 recurrence (``lightning_attn_decode``);
        ``"auto"`` (default): ``"chunk"`` where the learner's lightning attention runs the Triton kernels (CUDA)
        and the inputs are bf16/fp16, else ``"exact"`` (the CPU reference is the fp32 recurrence itself)."""
        if max_slots < 1 or max_seq_len < 2:
            raise UserInputError(f"max_slots must be >= 1 and max_seq_len >= 2, got {max_slots}, {max_seq_len}")
        self.model, self.config = model, model.config
        weight = model.lm_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.autocast_dtype = autocast_dtype = self.resolve_autocast(autocast_dtype, self.dtype)
        self._regions = _REGIONS if autocast_dtype is None else {
            name: _autocast_region(fn, self.device.type, autocast_dtype) for name, fn in _REGIONS.items()}
        if lightning_decode not in ("auto", "chunk", "exact"):
            raise UserInputError(f"lightning_decode must be 'auto', 'chunk' or 'exact', got {lightning_decode!r}")
        low = (autocast_dtype or self.dtype) in (torch.bfloat16, torch.float16)
        if lightning_decode == "auto":  # mirror the learner's Triton chunk kernel where it runs
            head_dim = self.config.head_dim
            lightning_decode = "chunk" if low and _use_triton(weight[:0], (head_dim, head_dim)) else "exact"
        self.lightning_decode = lightning_decode
        self.cache = StaticCache(model, max_slots, max_seq_len, kv_dtype=autocast_dtype,
                                 chunk=CHUNK if lightning_decode == "chunk" else 0)
        self.slots, self.max_seq_len = max_slots, max_seq_len
        dev, s = self.device, max_slots
        # Per-slot inputs and outputs of the decode step (static addresses for the graph).
        self.tokens = torch.zeros(s, device=dev, dtype=torch.long)  # the token each row feeds next
        self.active = torch.zeros(s, device=dev, dtype=torch.bool)
        self.temperature = torch.ones(s, device=dev)
        self.top_p = torch.ones(s, device=dev)
        self.stops = torch.full((s, MAX_STOPS), -1, device=dev, dtype=torch.long)
        self.max_new = torch.ones(s, device=dev, dtype=torch.int32)
        self.count = torch.zeros(s, device=dev, dtype=torch.int32)  # tokens generated per row
        self.finished = torch.zeros(s, device=dev, dtype=torch.bool)  # the row's request is done (host reads it)
        self.out_tokens = torch.zeros(s, 1, device=dev, dtype=torch.long)
        self.out_logprobs = torch.zeros(s, 1, device=dev, dtype=torch.float32)
        self.seeds = torch.zeros(s, device=dev, dtype=torch.long)  # each row's noise stream (counter_noise)
        self._stack_experts()
        self._pointers = self._weight_pointers()  # a captured graph reads these addresses
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        if compile is None:
            compile = self.device.type == "cuda" and os.environ.get("LIGHTSWE_SAMPLER_COMPILE", "1") != "0"
        self._step_fn = {}
        self.compile = compile
        # inductor options: keep eager's bf16/fp16 rounding of every intermediate (the learner runs eagerly)
        self.compile_options = {"emulate_precision_casts": True}
        if compile:  # one compiled graph per region and shape; layers and engines of other sizes add entries
            config = torch._dynamo.config
            name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
            setattr(config, name, max(getattr(config, name), 64))
        self._graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self.queue: deque[_Request] = deque()
        self.running: dict[int, _Request] = {}  # slot -> request
        self.free = list(range(s))
        # Slots whose last request's logits were not finite: its NaN keys/values past the next prompt's length
        # would reach the next request through a masked attention weight (0 x NaN = NaN in the reference
        # attention), so such a slot's cache is zeroed when it is handed out again (no state between requests).
        self._dirty: set[int] = set()
        self._next_rid = 0
        self._seq = 0
        self._pending_flags: tuple[torch.Tensor, torch.cuda.Event | None, int] | None = None
        self.stats = EngineStats()
        pinned = self.device.type == "cuda"
        self._host_flags = [torch.zeros(s, dtype=torch.bool, pin_memory=pinned) for _ in range(2)]
        self._flag_turn = 0

    # ----------------------------------------------------------------------------------------- weights
    def _stack_experts(self) -> None:
        """[E, 2 * inner, hidden] (w1 | w3) and [E, hidden, inner] (w2) per layer, copied from the experts."""
        self._w13, self._w2 = [], []
        for layer in self.model.model.layers:
            experts = layer.block_sparse_moe.experts
            dtype = self.autocast_dtype or experts[0].w1.weight.dtype
            self._w13.append(torch.stack([torch.cat([e.w1.weight, e.w3.weight]) for e in experts]).to(dtype))
            self._w2.append(torch.stack([e.w2.weight for e in experts]).to(dtype))

    def _weight_pointers(self) -> tuple[int, ...]:
        return tuple(p.data_ptr() for p in self.model.parameters())

    @torch.no_grad()
    def refresh_weights(self) -> None:
        """Copy the experts' current weights into the stacked buffers (in place: graphs stay valid)."""
        for i, layer in enumerate(self.model.model.layers):
            experts = layer.block_sparse_moe.experts
            inner = experts[0].w1.weight.shape[0]
            for e, expert in enumerate(experts):
                self._w13[i][e, :inner].copy_(expert.w1.weight)
                self._w13[i][e, inner:].copy_(expert.w3.weight)
                self._w2[i][e].copy_(expert.w2.weight)

    # -------------------------------------------------------------------------------------- requests
    def add(self, prompt: list[int], sampling: SamplingConfig) -> int:
        """Queue a request; returns its id. Raises ValueError if it cannot fit in ``max_seq_len``."""
        if not prompt:
            raise UserInputError("expected a non-empty prompt (token id list)")
        vocab = self.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise UserInputError(f"prompt token ids must be in [0, vocab_size={vocab})")
        if len(prompt) + sampling.max_new_tokens > self.max_seq_len:
            raise UserInputError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({sampling.max_new_tokens}) exceeds "
                             f"the engine's max_seq_len={self.max_seq_len}: build it with a larger max_seq_len")
        if len(sampling.stop_token_ids) > MAX_STOPS:
            raise UserInputError(f"at most {MAX_STOPS} stop token ids per request, got {len(sampling.stop_token_ids)}")
        if not self.has_work():
            if self._weight_pointers() != self._pointers:  # parameters replaced, not updated in place
                self._graphs.clear()
                self._stack_experts()
                self._pointers = self._weight_pointers()
            self.refresh_weights()
        rid = self._next_rid
        self._next_rid += 1
        seed = sampling.seed  # an unseeded request draws its stream once from the global RNG (torch.manual_seed)
        if seed is None:
            seed = int(torch.randint(0, 2 ** 63 - 1, (), dtype=torch.long))
        self.queue.append(_Request(rid=rid, prompt=list(prompt), sampling=sampling, seed=seed))
        return rid

    def has_work(self) -> bool:
        return bool(self.queue or self.running)

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, *,
                 seeds: list[int | None] | None = None) -> list[Generation]:
        """Sample a continuation of every prompt (``max_slots`` at a time, continuously refilled); in order.
        ``seeds`` as in ``lightswe.model.generation.generate`` (default: ``row_seed(sampling.seed, i)``).

        Raises:
            lightswe.errors.NonFiniteError: a row's logits were not finite (its Generation from ``step`` has
                finish_reason "error"); the other rows ran to their end."""
        if not prompts:
            raise UserInputError("expected a non-empty list of non-empty prompts (token id lists)")
        seeds = row_seeds(len(prompts), sampling, seeds)
        ids = [self.add(p, dataclasses.replace(sampling, seed=seed)) for p, seed in zip(prompts, seeds)]
        results: dict[int, Generation] = {}
        while self.has_work():
            results.update(self.step())
        bad = [i for i, rid in enumerate(ids) if results[rid].finish_reason == "error"]
        if bad:
            raise non_finite_rows_error(len(bad), len(ids), f"first: prompt {bad[0]}, at token "
                                        f"{len(results[ids[bad[0]]].token_ids)}", where="the sampler engine")
        return [results[i] for i in ids]

    # ------------------------------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self) -> list[tuple[int, Generation]]:
        """Admit waiting requests into free slots, queue one decode step, return the requests that finished."""
        self._ensure_output_room()
        if self.queue and self.free:
            self._admit()
        finished = []
        if self.running:
            self.stats.steps += 1
            self.stats.occupancy.append(len(self.running))
            use_top_p = any(r.sampling.top_p < 1 for r in self.running.values())
            if self.use_graphs:
                self._graph(use_top_p).replay()
            else:
                self._step(use_top_p)
            flags = self._host_flags[self._flag_turn]
            self._flag_turn ^= 1
            flags.copy_(self.finished, non_blocking=self.device.type == "cuda")
            event = None
            if self.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
            self._seq += 1
            previous, self._pending_flags = self._pending_flags, (flags, event, self._seq)
            if previous is not None:  # last step's flags: ready, or nearly, while this step runs
                finished = self._collect(*previous)
        elif self._pending_flags is not None:
            previous, self._pending_flags = self._pending_flags, None
            finished = self._collect(*previous)
        if not self.running and self._pending_flags is not None:  # nothing left running: read the last flags
            previous, self._pending_flags = self._pending_flags, None
            finished += self._collect(*previous)
        return finished

    def _collect(self, flags: torch.Tensor, event: torch.cuda.Event | None, seq: int
                 ) -> list[tuple[int, Generation]]:
        """The requests whose 'finished' flag was set when ``flags`` was copied (a slot's flag counts only for
        the request admitted before that copy: a slot may have been refilled since)."""
        if event is not None:
            event.synchronize()
        slots = [s for s in np.flatnonzero(flags.numpy()).tolist()
                 if s in self.running and self.running[s].seq < seq]
        if not slots:
            return []
        index = torch.tensor(slots, device=self.device)
        counts = self.count[index].tolist()
        tokens = self.out_tokens[index].tolist()
        logprobs = self.out_logprobs[index].tolist()
        out = []
        for slot, n, toks, lps in zip(slots, counts, tokens, logprobs):
            request = self.running.pop(slot)
            toks, lps = toks[:n], lps[:n]
            stop = toks[-1] in request.sampling.stop_token_ids
            reason = "error" if math.isnan(lps[-1]) else "stop" if stop else "length"  # NaN: non-finite logits
            if reason == "error":
                self._dirty.add(slot)
            request.result = Generation(
                token_ids=toks, logprobs=lps, finish_reason=reason,
                prompt_tokens=len(request.prompt),
                cache_bytes=self.cache.state_bytes_per_row + (len(request.prompt) + n - 1)
                * self.cache.kv_bytes_per_token)
            self.free.append(slot)
            self.stats.tokens += n
            out.append((request.rid, request.result))
        return out

    def _ensure_output_room(self) -> None:
        """Grow the per-row output buffers to the longest max_new_tokens queued (re-capturing the graphs)."""
        need = max((r.sampling.max_new_tokens for r in self.queue), default=0)
        if need <= self.out_tokens.shape[1]:
            return
        if self.running:  # never reallocate under running rows: admit the longer request after they finish
            return
        size = 1 << max(need - 1, 1).bit_length()
        self.out_tokens = torch.zeros(self.slots, size, device=self.device, dtype=torch.long)
        self.out_logprobs = torch.zeros(self.slots, size, device=self.device, dtype=torch.float32)
        self._graphs.clear()
        self._step_fn.clear()

    # ----------------------------------------------------------------------------------------- admit
    def _admit(self) -> None:
        """Prefill the waiting requests that fit into free slots (packed), and sample their first tokens."""
        room = self.out_tokens.shape[1]
        batch = []
        while self.queue and self.free and len(batch) < len(self.free):
            if self.queue[0].sampling.max_new_tokens > room:
                break  # waits for the running rows to finish (see _ensure_output_room)
            batch.append(self.queue.popleft())
        if not batch:
            return
        self.free.sort()  # lowest free slots first: a seeded run does not depend on the previous run's order
        slots = [self.free.pop(0) for _ in batch]
        self._seq += 1
        for request, slot in zip(batch, slots):
            request.slot, request.seq = slot, self._seq
            self.running[slot] = request
        self.stats.prefills += 1
        model, cache, dev = self.model, self.cache, self.device
        for slot in self._dirty.intersection(slots):  # a NaN row's leftovers (see __init__): rare, so zeroed here
            for store in (cache.keys, cache.values, cache.states, cache.chunk_keys, cache.chunk_values,
                          cache.rounded_states):
                if store.numel():
                    store[:, slot] = 0
            self._dirty.discard(slot)
        prompt_lengths = [len(r.prompt) for r in batch]
        prefill = model.new_cache(len(batch))
        cu = torch.tensor([0, *np.cumsum(prompt_lengths).tolist()], device=dev)
        flat = torch.tensor([t for r in batch for t in r.prompt], device=dev)[None]
        qkv = {}  # the lightning layers' silu(q | k | v) of the packed prompts (chunk form)
        hooks = [model.model.layers[i].self_attn.qkv_proj.register_forward_hook(
                 lambda module, args, out, i=i: qkv.__setitem__(i, out)) for i in cache.lightning_layers
                 if cache.chunk]
        try:
            with self._autocast(), self._fp32_residual():
                hidden, _ = model.hidden_states(flat, cu, prefill)
        finally:
            for hook in hooks:
                hook.remove()
        logits = model.logits(hidden[0, cu[1:] - 1])  # [n, vocab] fp32
        index = torch.tensor(slots, device=dev)
        for layer in cache.lightning_layers:
            j = cache.index[layer]
            if cache.chunk:
                attn = model.model.layers[layer].self_attn
                qkv_heads = F.silu(qkv.pop(layer)).view(-1, attn.num_heads, 3 * attn.head_dim)
                _, k, v = qkv_heads.split(attn.head_dim, -1)
                state, keys, values = chunk_start(k, v, attn.slope(dev), prompt_lengths, cache.chunk)
                cache.states[j, index] = state
                cache.rounded_states[j, index] = state.to(cache.rounded_states.dtype)
                cache.chunk_keys[j, index], cache.chunk_values[j, index] = keys, values
            else:
                cache.states[j, index] = prefill.lightning_state(layer)
        for layer in cache.softmax_layers:
            longest = max(prompt_lengths)
            for store, prefilled in ((cache.keys, prefill._keys), (cache.values, prefill._values)):
                store[cache.index[layer], index, :, :longest] = prefilled[layer][:, :, :longest].to(store.dtype)
        del prefill
        cache.lengths[index] = torch.tensor(prompt_lengths, device=dev, dtype=torch.int32)
        self.temperature[index] = torch.tensor([float(r.sampling.temperature) for r in batch], device=dev)
        self.top_p[index] = torch.tensor([float(r.sampling.top_p) for r in batch], device=dev)
        stops = torch.full((len(batch), MAX_STOPS), -1, dtype=torch.long)
        for i, r in enumerate(batch):
            stops[i, : len(r.sampling.stop_token_ids)] = torch.tensor(r.sampling.stop_token_ids, dtype=torch.long)
        self.stops[index] = stops.to(dev)
        self.max_new[index] = torch.tensor([r.sampling.max_new_tokens for r in batch], device=dev,
                                           dtype=torch.int32)
        self.count[index] = 0
        self.finished[index] = False
        self.active[index] = True
        self.seeds[index] = torch.tensor([r.seed for r in batch], device=dev, dtype=torch.long)
        noise = counter_noise(self.seeds[index], cache.lengths[index].long(), logits.shape[-1])
        use_top_p = any(r.sampling.top_p < 1 for r in batch)
        tokens, logprobs = _sample(logits, self.temperature[index], self.top_p[index], noise, use_top_p)
        self._record(index, tokens, logprobs)

    # ----------------------------------------------------------------------------------------- decode
    def _record(self, rows: torch.Tensor | slice, tokens: torch.Tensor, logprobs: torch.Tensor) -> None:
        """Write each active row's sampled token, check stops and lengths, advance (all on the device)."""
        out = _record_values(self.active[rows], self.count[rows], self.out_tokens[rows], self.out_logprobs[rows],
                             self.stops[rows], self.max_new[rows], self.finished[rows], tokens, logprobs)
        for buffer, value in zip((self.out_tokens, self.out_logprobs, self.count, self.finished, self.active,
                                  self.tokens), out):
            buffer[rows] = value

    def _step(self, use_top_p: bool) -> None:
        """The decode step; with ``self.compile`` its pure-tensor regions go through torch.compile (the Triton
        kernels and the cache writes stay outside them), set up on first use; eager if compiling fails."""
        if self.compile and not self._step_fn:
            saved = [t.clone() for t in self._step_state()]
            self._step_fn = {name: torch.compile(fn, dynamic=False, options=self.compile_options)
                             for name, fn in self._regions.items()}
            try:
                self._decode(use_top_p)
            except Exception as err:  # noqa: BLE001 - an optimisation only: fall back to the eager step
                warnings.warn(f"torch.compile of the decode step failed ({type(err).__name__}: {err}); "
                              f"running it eagerly", stacklevel=2)
                self.compile = False
                self._step_fn = {}
            for t, s in zip(self._step_state(), saved):
                t.copy_(s)
        self._decode(use_top_p)

    def _region(self, name: str):
        return self._step_fn.get(name, self._regions[name])

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The learner's mixed precision around the eager parts of prefill and decode (see ``__init__``)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    @contextlib.contextmanager
    def _fp32_residual(self):
        """While active (mixed precision only), the embedding returns fp32: the residual stream stays fp32
        through the model's own forward (``hidden_states``), as under autocast with fp32 master weights."""
        if self.autocast_dtype is None:
            yield
            return
        hook = self.model.model.embed_tokens.register_forward_hook(lambda module, args, out: out.float())
        try:
            yield
        finally:
            hook.remove()

    def _decode(self, use_top_p: bool) -> None:
        """One token for every slot (inactive slots compute and are ignored); no host reads."""
        model, cache = self.model, self.cache
        positions = cache.lengths.long()  # the new token's position = tokens already cached
        x = model.model.embed_tokens(self.tokens)[:, None]  # [S, 1, hidden]
        if self.autocast_dtype is not None:
            x = x.float()  # the learner's residual stream under autocast
        write = positions.clamp(max=cache.max_seq_len - 1)
        rows = torch.arange(self.slots, device=self.device)
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            if isinstance(attn, LightningAttention):
                h, q, k, v = self._region("lightning_in")(layer, x)
                j = cache.index[i]
                if cache.chunk:
                    o = lightning_attn_decode_chunk_form(q, k, v, attn.slope(self.device), cache.states[j],
                                                         cache.chunk_keys[j], cache.chunk_values[j], cache.lengths,
                                                         rounded_state=cache.rounded_states[j])
                else:
                    o = lightning_attn_decode(q, k, v, attn.slope(self.device), cache.states[j])
                a = self._region("lightning_out")(attn, h, o)
            else:
                assert isinstance(attn, SoftmaxAttention)
                h, q, k, v = self._region("softmax_in")(layer, x, positions, cache.keys.dtype)
                j = cache.index[i]
                cache.keys[j, rows, :, write] = k
                cache.values[j, rows, :, write] = v
                o = decode_attention(q, cache.keys[j], cache.values[j], write + 1, 1.0 / math.sqrt(attn.head_dim))
                with self._autocast():
                    a = attn.o_proj(o.reshape(self.slots, 1, -1))
            x = self._region("block_tail")(layer, x, h, a, self._w13[i], self._w2[i])
        tokens, logprobs = self._region("head_sample")(model.model.norm, model.lm_head.weight, x, self.temperature,
                                                       self.top_p, self.seeds, positions + 1, use_top_p)
        cache.lengths.add_(self.active.int())
        out = self._region("record")(self.active, self.count, self.out_tokens, self.out_logprobs, self.stops,
                                     self.max_new, self.finished, tokens, logprobs)
        for buffer, value in zip((self.out_tokens, self.out_logprobs, self.count, self.finished, self.active,
                                  self.tokens), out):
            buffer.copy_(value)

    def _graph(self, use_top_p: bool) -> torch.cuda.CUDAGraph:
        """The decode step captured once per top-p mode (after a warm-up run on a side stream)."""
        if use_top_p not in self._graphs:
            saved = [t.clone() for t in self._step_state()]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._step(use_top_p)  # warm-up: torch.compile and Triton compile, cuBLAS picks kernels
                self._step(use_top_p)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(use_top_p)
            for t, s in zip(self._step_state(), saved):  # capture ran the step twice: undo both
                t.copy_(s)
            self._graphs[use_top_p] = graph
        return self._graphs[use_top_p]

    def _step_state(self) -> list[torch.Tensor]:
        c = self.cache
        return [c.states, c.rounded_states, c.keys, c.values, c.chunk_keys, c.chunk_values, c.lengths, self.tokens,
                self.active, self.count, self.finished, self.out_tokens, self.out_logprobs]


def chunk_start(k: torch.Tensor, v: torch.Tensor, slope: torch.Tensor, lengths: list[int], chunk: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chunk-form decoding state of prefilled sequences, as the learner's chunk kernel has it.

    k [T, H, D], v [T, H, Dv]: one lightning layer's keys and values of the packed sequences of ``lengths``;
    slope [H]. For each sequence with A = its length rounded down to a multiple of ``chunk``: the state after
    its first A tokens, S = sum_t 2^(b chunk (C-1-c_t)) k_t^T round(v_t 2^(b (chunk-1-j_t))) (token t in chunk
    c_t at index j_t, C = A / chunk chunks, b = -slope log2 e, round() to k's dtype: chunk.py's
    ``_fwd_kernel`` with DECAY_OUT, the decay on v), [N, H, D, Dv] fp32; and its last length - A keys and values, zero-padded to
    [N, H, chunk, D] and [N, H, chunk, Dv] in k's dtype."""
    device, dtype = k.device, k.dtype
    with torch.autocast(device.type, enabled=False):
        n, heads = len(lengths), k.shape[1]
        starts = torch.tensor([0, *np.cumsum(lengths)[:-1].tolist()], device=device)[:, None]
        aligned = torch.tensor([n_ // chunk * chunk for n_ in lengths], device=device)[:, None]  # [N, 1]
        size = max(n_ // chunk * chunk for n_ in lengths)  # (no device sync)
        state = torch.zeros(n, heads, k.shape[2], v.shape[2], device=device, dtype=torch.float32)
        if size:
            pos = torch.arange(size, device=device)[None]  # [1, A]
            valid = pos < aligned
            index = torch.where(valid, starts + pos, 0)
            b = -slope.float() * LOG2E  # [H]
            k_decay = torch.exp2(b * (chunk - 1 - pos % chunk)[..., None].float())  # [1, A, H]
            vd = (v[index].float() * k_decay[..., None]).to(dtype).float()  # [N, A, H, Dv]
            later = (aligned // chunk - 1 - pos // chunk).float()[..., None]  # chunks after the token's
            weight = torch.where(valid[..., None], torch.exp2(b * chunk * later.clamp(min=0)), 0.0)
            state = torch.einsum("nthk,nthv->nhkv", k[index].float() * weight[..., None], vd)
        pos = torch.arange(chunk, device=device)[None]
        tail = pos < torch.tensor(lengths, device=device)[:, None] - aligned  # [N, chunk]
        index = torch.where(tail, starts + aligned + pos, 0)
        keys = torch.where(tail[..., None, None], k[index], 0).transpose(1, 2).contiguous()
        values = torch.where(tail[..., None, None], v[index], 0).transpose(1, 2).contiguous()
    return state, keys, values


def _sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, noise: torch.Tensor,
            use_top_p: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sampling from fp32 logits [N, V]: temperature [N] (0 = greedy), top-p [N], exponential noise
    [N, V] (token = argmax p / noise: a draw from p). Returns tokens [N] long and fp32 log-probs [N] of the
    sampled tokens under softmax(logits / T) (T = 1 for greedy rows), before top-p truncation; a row whose
    logits are not finite (``nonfinite_rows``: NaN, +inf, all -inf) gets log-prob NaN, which ends it
    (``_record_values``) with finish_reason "error" (no host sync here: the check is read with the row's result)."""
    greedy = temperature == 0
    bad = nonfinite_rows(logits)  # NaN / +inf / all -inf: no token can be drawn (flagged, not sampled silently)
    scaled = scale_logits(logits, torch.where(greedy, 1.0, temperature)[:, None])  # finite at a tiny temperature
    logprobs = torch.log_softmax(scaled, dim=-1)
    probs = logprobs.exp()
    if use_top_p:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p[:, None]  # keep the smallest set reaching top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    sampled = (probs / noise[: probs.shape[0]]).argmax(-1)
    tokens = torch.where(greedy, logits.argmax(-1), sampled)
    logprobs = torch.where(bad, torch.nan, logprobs.gather(-1, tokens[:, None]).squeeze(-1))
    return tokens, logprobs


# ------------------------------------------------------------------ the decode step's pure-tensor regions
def _lightning_in(layer, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """input norm and the lightning q, k, v [S, H, D] (contiguous) of a decode step; x [S, 1, hidden]."""
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    qkv = F.silu(attn.qkv_proj(h)).view(x.shape[0], attn.num_heads, 3 * attn.head_dim)
    q, k, v = qkv.split(attn.head_dim, dim=-1)
    return h, q.contiguous(), k.contiguous(), v.contiguous()


def _lightning_out(attn, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    y = attn.norm(o.reshape(o.shape[0], 1, -1).to(h.dtype))
    return attn.out_proj(torch.sigmoid(attn.output_gate(h)) * y)


def _softmax_in(layer, x: torch.Tensor, positions: torch.Tensor, kv_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """input norm, RoPE'd q [S, H, D] and k, v [S, KVH, D] (in the cache's dtype) of a decode step."""
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    rows, pos = x.shape[0], positions[:, None]
    q = rotary(attn.q_proj(h).view(rows, 1, attn.num_heads, attn.head_dim), pos, attn.rotary_dim, attn.theta)
    k = rotary(attn.k_proj(h).view(rows, 1, attn.num_kv_heads, attn.head_dim), pos, attn.rotary_dim, attn.theta)
    v = attn.v_proj(h).view(rows, attn.num_kv_heads, attn.head_dim)
    return h, q[:, 0].contiguous(), k[:, 0].to(kv_dtype), v.to(kv_dtype)


def _moe(moe, x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The layer's SparseMoE on x [N, hidden] with every expert run on every row (three batched matrix
    products over the stacked weights w13 [E, 2 inner, hidden], w2 [E, hidden, inner], no host sync); each row
    adds its top-k experts' weighted outputs in ascending expert order, in x's dtype, as SparseMoE's
    index_add_ does."""
    probs = torch.softmax(moe.gate(x).float(), dim=-1)
    weights, chosen = probs.topk(moe.top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    chosen, order = chosen.sort(-1)
    weights = weights.gather(-1, order).to(x.dtype)
    inner = w2.shape[2]
    h = torch.matmul(x[None], w13.transpose(1, 2))  # [E, N, 2 * inner]
    y = torch.matmul(F.silu(h[..., :inner]) * h[..., inner:], w2.transpose(1, 2))  # [E, N, hidden]
    rows = torch.arange(x.shape[0], device=x.device)
    out = torch.zeros_like(x)
    for j in range(moe.top_k):
        out = out + y[chosen[:, j], rows] * weights[:, j, None]
    return out


def _block_tail(layer, x: torch.Tensor, h: torch.Tensor, a: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor
                ) -> torch.Tensor:
    """The decoder layer after its attention: residual, post-attention norm, MoE, residual (DecoderLayer)."""
    x = layer.attn_alpha * (h if layer.postnorm else x) + layer.attn_beta * a
    h = layer.post_attention_layernorm(x)
    moe = _moe(layer.block_sparse_moe, h[:, 0], w13, w2)[:, None]
    return layer.mlp_alpha * (h if layer.postnorm else x) + layer.mlp_beta * moe


def _head_sample(norm, weight: torch.Tensor, x: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                 seeds: torch.Tensor, counters: torch.Tensor, use_top_p: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logits = fp32_head(norm(x)[:, 0], weight)
    return _sample(logits, temperature, top_p, counter_noise(seeds, counters, logits.shape[-1]), use_top_p)


def _record_values(active, count, out_tokens, out_logprobs, stops, max_new, finished, tokens, logprobs):
    """New (out_tokens, out_logprobs, count, finished, active, tokens) after sampling ``tokens``: active rows
    write their token and log-prob at column ``count`` and stop on a stop token, at max_new tokens, or on a NaN
    log-prob (non-finite logits: ``_sample``)."""
    col = count.clamp(max=out_tokens.shape[1] - 1).long()[:, None]
    keep_tokens = torch.where(active, tokens, out_tokens.gather(1, col)[:, 0])  # inactive rows: unchanged
    keep_logprobs = torch.where(active, logprobs, out_logprobs.gather(1, col)[:, 0])
    count = count + active.int()
    done = active & ((tokens[:, None] == stops).any(-1) | (count >= max_new) | logprobs.isnan())  # NaN: _sample
    return (out_tokens.scatter(1, col, keep_tokens[:, None]), out_logprobs.scatter(1, col, keep_logprobs[:, None]),
            count, finished | done, active & ~done, tokens)


def _autocast_region(fn, device_type: str, dtype: torch.dtype):
    """``fn`` under ``torch.autocast(device_type, dtype)`` (inside, so torch.compile traces the casts)."""
    def region(*args):
        with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
            return fn(*args)
    region.__name__ = region.__qualname__ = fn.__name__
    return region


_REGIONS = {"lightning_in": _lightning_in, "lightning_out": _lightning_out, "softmax_in": _softmax_in,
            "block_tail": _block_tail, "head_sample": _head_sample, "record": _record_values}
