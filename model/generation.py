"""Batched sampling with the hybrid cache: packed prefill of all prompts, then one token per step for each.

Prompts of different lengths are prefilled together as one packed sequence (no padding reaches the
lightning states); finished sequences leave the batch (their cache rows are dropped). Every sampled token
comes with its fp32 log-prob under the sampling distribution (softmax of logits / temperature, before top-p
truncation; temperature 0 = greedy, log-prob under the plain softmax), which the learner uses as the
behaviour log-prob.

Seeds are per row: a seeded row draws from its own ``torch.Generator`` (as vLLM's per-request ``seed``), so the
tokens it samples do not depend on which other prompts share its batch, nor on their order. A call's
``SamplingConfig.seed`` gives row i the seed ``row_seed(seed, i)``; ``seeds=`` names each row's seed directly
(a batching policy passes its requests' own seeds). The log-probs of a row can still differ in the last bits
with its batch-mates (matrix-product kernels pick their blocking by the number of rows): see
``ModelPolicy(batch_invariant=True)`` for bit-identical rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from lightswe.errors import UserInputError

if TYPE_CHECKING:
    from lightswe.model.model import MiniMaxForCausalLM


@dataclass(kw_only=True, slots=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()  # the stop token is kept in the output (the policy must learn it)
    seed: int | None = None  # >= 0; row i of a call samples with row_seed(seed, i) (see the module docs)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UserInputError(f"expected max_new_tokens >= 1, temperature >= 0, 0 < top_p <= 1; got "
                             f"{self.max_new_tokens}, {self.temperature}, {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise UserInputError(f"seed must be >= 0 (or None for the global RNG), got {self.seed}")
        self.stop_token_ids = tuple(self.stop_token_ids)


def row_seed(seed: int, *key: int) -> int:
    """An independent seed in [0, 2^63) for stream ``key`` (e.g. a row, or an episode's turn) of ``seed``: NumPy's
    ``SeedSequence(seed, spawn_key=key)``, the hash NumPy uses to spawn non-overlapping child streams, so nearby
    seeds and keys (seed 1 row 0, seed 0 row 1) do not share draws as ``seed + row`` would. 63 bits: a signed
    64-bit integer holds it (vLLM's OpenAI server refuses a larger ``seed``).

    Raises:
        ValueError: a negative seed or key.
    """
    if seed < 0 or any(k < 0 for k in key):
        raise UserInputError(f"seeds and stream keys must be >= 0, got seed {seed}, key {key}")
    low, high = np.random.SeedSequence(seed, spawn_key=key).generate_state(2, np.uint32).tolist()
    return (low | high << 32) >> 1


def row_seeds(count: int, sampling: SamplingConfig, seeds: Sequence[int | None] | None) -> list[int | None]:
    """Each of ``count`` rows' seed: ``seeds`` as given (one per row), else ``row_seed(sampling.seed, i)``, else None
    (the global torch RNG). Raises ValueError when ``seeds`` does not have one entry per row or one is < 0."""
    if seeds is None:
        return [None if sampling.seed is None else row_seed(sampling.seed, i) for i in range(count)]
    seeds = list(seeds)
    if len(seeds) != count or any(s is not None and s < 0 for s in seeds):
        raise UserInputError(f"expected one seed (>= 0, or None) per prompt: {count} prompts, seeds {seeds}")
    return seeds


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons, hash-prospector): a bijection of [0, 2^32) on int64 tensors; each product stays
    below 2^63, so no signed overflow on any backend."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def counter_noise(seeds: torch.Tensor, counters: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exponential(1) noise [N, vocab] fp32 for exponential-race sampling, a pure function of each row's
    (seed, counter) and the token id: a counter-based generator (the idea of Philox, Salmon et al. 2011, "Parallel
    random numbers: as easy as 1, 2, 3", with a 32-bit integer hash per round), so the whole draw is tensor ops
    that a CUDA graph replays with no host work and a row's noise never depends on its batch-mates.

    ``seeds`` [N] int64 in [0, 2^63) (``row_seed``), ``counters`` [N] int64 >= 0 (the sampled token's position).
    u = (top 24 bits of the hash + 0.5) / 2^24 in (0, 1), noise = -log(u). Checked against Exp(1) (KS) and for
    ``argmax p / noise`` drawing from p in tests/model/test_generation.py.
    """
    low, high = seeds & _MASK32, (seeds >> 32) & _MASK32
    a = _mix32(_mix32(low ^ _mix32(counters & _MASK32)) ^ high)
    b = _mix32(a ^ 0x5BD1E995)
    token = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    h = _mix32(_mix32(token ^ a[:, None]) ^ b[:, None])
    return -torch.log(((h >> 8).to(torch.float32) + 0.5) * 2.0 ** -24)


def row_generators(seeds: Sequence[int | None], device: torch.device) -> list[torch.Generator | None]:
    """One ``torch.Generator`` on ``device`` per seeded row (None for unseeded rows)."""
    return [None if s is None else torch.Generator(device=device).manual_seed(s) for s in seeds]


@dataclass(kw_only=True, slots=True)
class Generation:
    token_ids: list[int]  # the new tokens only (a final stop token included)
    logprobs: list[float]  # fp32 log-prob of each new token under the sampling distribution
    # "stop" (a stop token was sampled), "length" (max_new_tokens reached) or, from ``SamplerEngine.step`` only,
    # "error" (the row's logits were not finite: its last log-prob is NaN; ``SamplerEngine.generate`` raises instead)
    finish_reason: str
    prompt_tokens: int = 0
    cache_bytes: int = 0  # cache memory this sequence held when it finished (lightning state + its KV)


def nonfinite_rows(logits: torch.Tensor) -> torch.Tensor:
    """Rows of ``logits`` [N, vocab] no token can be drawn from: [N] bool, True where a row holds a NaN or a +inf
    (an overflow), or no finite value at all (every entry -inf). -inf entries beside finite ones are a mask, not
    a fault. No host sync (the CUDA engine calls it inside its captured step)."""
    return ~logits.amax(-1).isfinite()  # amax propagates NaN; +inf anywhere, or -inf everywhere, is its value


def non_finite_rows_error(bad: int, total: int, detail: str, *, where: str = "the sampler"):
    """The one message of a non-finite-logits failure, for every sampler (``sample`` below, the ``SamplerEngine``,
    the built-in model policy): a ``lightswe.errors.NonFiniteError`` naming ``where`` it happened, ``bad`` of
    ``total`` rows, ``detail`` (which row, which token) and the fix."""
    from lightswe.errors import NonFiniteError

    return NonFiniteError(
        f"{where}: the model's logits are not finite in {bad} of {total} row(s) ({detail}), so no token can be drawn "
        "from them (this episode is not scored); fix: check the weights (a diverged or damaged checkpoint gives NaN; "
        "an overflow in bf16/fp16 gives inf: load or sample in float32)")


def non_finite_error(logits: torch.Tensor, bad: torch.Tensor, *, where: str = "the sampler"):
    """:func:`non_finite_rows_error` for ``logits`` [N, vocab] and ``bad`` [N] bool from ``nonfinite_rows``: the
    detail names the first bad row's count of NaN, +inf and finite entries."""
    rows = torch.nonzero(bad).flatten().tolist()
    first = logits[rows[0]] if rows else logits.new_zeros(0)
    detail = (f"row {rows[0]}: {int(first.isnan().sum())} NaN, {int((first == torch.inf).sum())} +inf, "
              f"{int(first.isfinite().sum())} finite of {first.numel()}") if rows else "no row flagged"
    return non_finite_rows_error(len(rows), logits.shape[0], detail, where=where)


def scale_logits(logits: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """fp32 ``logits`` [N, vocab] / ``temperature`` (a float, or [N, 1]), kept finite for a tiny temperature: a row
    whose division overflows (|logit| / T > fp32's max, e.g. T = 1e-40) is divided after subtracting its max
    ((logits - max) / T: the same softmax, its largest entry exactly 0, the rest -inf or finite, so a draw at a tiny
    temperature is the argmax, as T -> 0 should give). Other rows are exactly ``logits / T``. Expects rows that
    pass ``nonfinite_rows`` (finite maximum); no host sync."""
    top = logits.amax(-1, keepdim=True)
    overflow = ~(top / temperature).isfinite()  # the row's largest logit / T overflows fp32
    return torch.where(overflow, (logits - top) / temperature, logits / temperature)


def sample(logits: torch.Tensor, sampling: SamplingConfig,
           generator: torch.Generator | Sequence[torch.Generator | None] | None, *,
           active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of fp32 ``logits`` [B, vocab]; return (tokens [B], log-probs [B] fp32).

    ``generator``: one for the whole batch, or one per row (a row's draw then depends only on its own generator;
    rows with None draw together from the global RNG). ``active`` [B] bool: the rows whose draw is used (default
    all); only these are checked.

    Raises:
        lightswe.errors.NonFiniteError: an active row's logits hold a NaN or +inf, or no finite value
            (``nonfinite_rows``): a token drawn from them would be noise (``torch.multinomial`` refuses them at
            T > 0; ``argmax`` would pick one silently at T = 0). One host sync per call.
    """
    bad = nonfinite_rows(logits)
    if active is not None and bad.any():
        if (bad & active).any():
            raise non_finite_error(logits, bad & active)
        logits = torch.where(bad[:, None], 0.0, logits)  # finished rows: their draws are unused, keep them valid
    elif bad.any():
        raise non_finite_error(logits, bad)
    if sampling.temperature == 0:
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(-1)
        return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    logprobs = torch.log_softmax(scale_logits(logits, sampling.temperature), dim=-1)
    probs = logprobs.exp()
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > sampling.top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if not isinstance(generator, torch.Generator) and generator is not None and all(g is None for g in generator):
        generator = None  # no row seeded: one draw from the global RNG
    if generator is None or isinstance(generator, torch.Generator):
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    else:
        if len(generator) != probs.shape[0]:
            raise UserInputError(f"expected one generator per row: {probs.shape[0]} rows, {len(generator)} generators")
        tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
        shared = [r for r, g in enumerate(generator) if g is None]
        if shared:
            tokens[shared] = torch.multinomial(probs[shared], 1).squeeze(-1)
        for r, g in enumerate(generator):
            if g is not None:
                tokens[r] = torch.multinomial(probs[r], 1, generator=g)[0]
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def generate(model: MiniMaxForCausalLM, prompts: list[list[int]], sampling: SamplingConfig, *,
             seeds: Sequence[int | None] | None = None) -> list[Generation]:
    """Sample a continuation of every prompt. Returns one ``Generation`` per prompt, in order.

    ``seeds``: each prompt's own sampling seed (None: the global RNG); default ``row_seed(sampling.seed, i)`` for
    prompt i when ``sampling.seed`` is set. A seeded row's tokens do not depend on the other rows.

    On CUDA this runs ``lightswe.model.engine.SamplerEngine`` (static cache, CUDA graphs, continuous batching;
    see ``engine_for``); elsewhere the plain loop below (``generate_loop``).

    Example::

        gens = generate(model, [[1, 2, 3], [4, 5]], SamplingConfig(max_new_tokens=8, stop_token_ids=(256,)))

    Raises:
        lightswe.errors.NonFiniteError: the model's logits for a row are not finite (NaN or damaged weights, an
            overflow): see ``sample``; the CUDA engine raises it too (``SamplerEngine.generate``).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserInputError("expected a non-empty list of non-empty prompts (token id lists)")
    vocab = model.config.vocab_size
    if any(not 0 <= t < vocab for p in prompts for t in p):
        raise UserInputError(f"prompt token ids must be in [0, vocab_size={vocab})")
    seeds = row_seeds(len(prompts), sampling, seeds)
    if model.lm_head.weight.device.type == "cuda":
        return engine_for(model, len(prompts), max(len(p) for p in prompts) + sampling.max_new_tokens
                          ).generate(prompts, sampling, seeds=seeds)
    return generate_loop(model, prompts, sampling, seeds=seeds)


@torch.no_grad()
def generate_loop(model: MiniMaxForCausalLM, prompts: list[list[int]], sampling: SamplingConfig, *,
                  seeds: Sequence[int | None] | None = None) -> list[Generation]:
    """The plain loop (any device; ``generate`` uses it off CUDA): packed prefill through a ``HybridCache``, then
    one eager batched forward per token, finished rows dropped; the host reads every step's tokens. ``seeds`` as
    in ``generate``: each row samples from its own generator."""
    device = model.lm_head.weight.device
    generators = row_generators(row_seeds(len(prompts), sampling, seeds), device)
    was_training = model.training
    model.eval()
    cache = model.new_cache(len(prompts), reserve=sampling.max_new_tokens)
    lengths = torch.tensor([len(p) for p in prompts])
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(device)
    flat = torch.tensor([t for p in prompts for t in p], device=device)[None]
    hidden, _ = model.hidden_states(flat, cu_seqlens, cache)
    logits = model.logits(hidden[0, cu_seqlens[1:] - 1])  # last position of each prompt

    out_tokens: list[list[int]] = [[] for _ in prompts]
    out_logprobs: list[list[float]] = [[] for _ in prompts]
    results: list[Generation | None] = [None] * len(prompts)
    rows = list(range(len(prompts)))  # cache row -> prompt index
    stop = set(sampling.stop_token_ids)
    for step in range(sampling.max_new_tokens):
        tokens, logprobs = sample(logits, sampling, [generators[i] for i in rows])
        keep = []
        row_bytes = cache.bytes_per_sequence()
        for row, (i, token, logprob) in enumerate(zip(rows, tokens.tolist(), logprobs.tolist())):
            out_tokens[i].append(token)
            out_logprobs[i].append(logprob)
            reason = "stop" if token in stop else "length" if step + 1 == sampling.max_new_tokens else None
            if reason is None:
                keep.append(row)
            else:
                results[i] = Generation(token_ids=out_tokens[i], logprobs=out_logprobs[i], finish_reason=reason,
                                        prompt_tokens=len(prompts[i]), cache_bytes=row_bytes[row])
        if not keep:
            break
        if len(keep) < len(rows):
            cache.select(keep)
            rows = [rows[r] for r in keep]
            tokens = tokens[keep]
        hidden, _ = model.hidden_states(tokens[:, None], cache=cache)
        logits = model.logits(hidden[:, -1])
    model.train(was_training)
    return [r for r in results if r is not None]


def engine_for(model: MiniMaxForCausalLM, rows: int, seq_len: int, *, max_slots: int = 256,
               autocast_dtype: torch.dtype | str | None = "auto"):
    """The model's cached ``SamplerEngine`` for ``rows`` concurrent rows of up to ``seq_len`` tokens.

    Slots are ``rows`` rounded up to a power of two (at most ``max_slots``; more prompts queue and join as
    rows finish); the length capacity is rounded up to a multiple of 1,024. The engine (and its captured CUDA
    graphs) is reused while both fit and its mixed precision (``autocast_dtype``, ``SamplerEngine``'s argument)
    is the one asked for, and replaced otherwise.
    """
    from lightswe.model.engine import SamplerEngine

    slots = min(1 << max(rows - 1, 0).bit_length(), max_slots)
    capacity = -(-seq_len // 1024) * 1024
    engine = getattr(model, "_sampler_engine", None)
    if engine is None or engine.slots != slots or engine.max_seq_len < capacity or engine.dtype != \
            model.lm_head.weight.dtype or engine.device != model.lm_head.weight.device or \
            engine.autocast_dtype != SamplerEngine.resolve_autocast(autocast_dtype, model.lm_head.weight.dtype):
        model._sampler_engine = None  # free the old cache before allocating the new one
        engine = SamplerEngine(model, max_slots=slots, max_seq_len=capacity, autocast_dtype=autocast_dtype)
        model._sampler_engine = engine
    return engine
