"""MiniMax-Text-01 / MiniMax-M1 as one PyTorch module, with the released parameter names.

Notable choices:
- Layer pattern from ``config.attn_type_list`` ('L' lightning, 'S' softmax; MiniMax: 'LLLLLLLS' x 10).
- Lightning attention goes through ``lightswe.kernels.lightning_attn`` (Triton on CUDA when available, the
  PyTorch reference elsewhere); the per-layer, per-head decay is computed here from the config.
- Packed training batches: input [1, T] with ``cu_seqlens``; positions restart at 0 for each sequence,
  lightning states start from zero per sequence, softmax attention stays inside each sequence.
- The LM head runs in fp32 (MiniMax-M1: train/inference probability agreement); ``token_logprobs`` applies it
  chunk by chunk under activation checkpointing, so [T, vocab] fp32 logits never exist whole, in forward
  or backward. On CUDA under autocast it runs as bf16x3 split products on tensor cores (``model/head.py``):
  log-probs within ~1.4e-4 of fp64 at bf16 GEMM speed (``LIGHTSWE_HEAD=fp32``: the fp32 GEMMs, 1.5e-5).
- The MoE load-balancing loss (mean over layers) comes with every forward (``CausalLMOutput.aux_loss``,
  ``TokenLogprobs.aux_loss``, and ``model.aux_loss`` for the latest forward); the learner adds
  ``config.router_aux_loss_coef`` times it if it wants it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lightswe.model.cache import HybridCache
from lightswe.model.config import MiniMaxConfig
from lightswe.model.generation import Generation, SamplingConfig, generate
from lightswe.model import head
from lightswe.model.head import head_logprobs, use_split_head
from lightswe.model.layers import DecoderLayer, RMSNorm
from torch import nn
from torch.utils.checkpoint import checkpoint
from lightswe.errors import UserInputError


@dataclass(kw_only=True, slots=True)
class CausalLMOutput:
    logits: torch.Tensor  # [B, T, vocab] fp32
    aux_loss: torch.Tensor  # scalar fp32, load-balancing loss averaged over layers


@dataclass(kw_only=True, slots=True)
class TokenLogprobs:
    """Per-token results aligned with ``input_ids``: entry t is about token t given the tokens before it.

    The first token of every sequence has no prediction: its log-prob and entropy are 0 (mask it out).
    """

    logprobs: torch.Tensor  # [B, T] fp32, log p(x_t | x_<t)
    entropy: torch.Tensor | None  # [B, T] fp32 entropy of the distribution that predicted x_t, if asked for
    aux_loss: torch.Tensor  # scalar fp32


class MiniMaxModel(nn.Module):
    """Embedding, decoder layers and final norm (``model.*`` in the checkpoint)."""

    def __init__(self, config: MiniMaxConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


def _positions(input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None, cache: HybridCache | None) -> torch.Tensor:
    batch, length = input_ids.shape
    steps = torch.arange(length, device=input_ids.device)
    if cache is not None and cache.started:
        return cache.lengths[:, None] + steps
    if cu_seqlens is None:
        return steps.expand(batch, length)
    starts = cu_seqlens[:-1].to(input_ids.device)
    sizes = cu_seqlens.diff().to(input_ids.device)
    return (steps - torch.repeat_interleave(starts, sizes))[None]


def fp32_head(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 logits [..., vocab] = hidden @ weight^T with both upcast, also under autocast (which would otherwise
    run F.linear in bf16: MiniMax-M1 keeps the head in fp32 for train/inference probability agreement)."""
    with torch.autocast(hidden.device.type, enabled=False):
        return F.linear(hidden.float(), weight.float())


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    logits = fp32_head(hidden, weight) / temperature  # [N, vocab] fp32, one chunk only
    lse = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logprobs, entropy


class MiniMaxForCausalLM(nn.Module):
    """The MiniMax causal language model. Parameter names match the released checkpoints.

    Example::

        model = MiniMaxForCausalLM(MiniMaxConfig.preset("tiny"))
        out = model(torch.tensor([[1, 2, 3]]))                # out.logits [1, 3, vocab] fp32
        lp = model.token_logprobs(torch.tensor([[1, 2, 3]]))  # [1, 3] fp32, lp[:, 0] == 0
        st = model.score(torch.tensor([[1, 2, 3]]))           # st.logprobs, st.entropy, st.aux_loss
    """

    def __init__(self, config: MiniMaxConfig) -> None:
        super().__init__()
        self.config = config
        self.model = MiniMaxModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False
        self.aux_loss = torch.zeros(())  # load-balancing loss of the latest forward (mean over layers)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, initializer_range) for every matrix and embedding, ones for the norms."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * self.config.initializer_range)

    # ------------------------------------------------------------------------------------ forward
    def hidden_states(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                      cache: HybridCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-norm hidden states [B, T, hidden] and the load-balancing loss.

        ``input_ids`` [B, T], or [1, T] packed with ``cu_seqlens`` [N + 1]. With a ``cache``, the tokens are
        appended to every row's cached prefix (the first call through an empty cache is the prefill).
        """
        if input_ids.dim() != 2:
            raise UserInputError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        if cu_seqlens is not None:
            if input_ids.shape[0] != 1:
                raise UserInputError(f"packed input (cu_seqlens) must be [1, T], got {tuple(input_ids.shape)}")
            if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != input_ids.shape[1]:
                raise UserInputError(f"cu_seqlens must run from 0 to T={input_ids.shape[1]}, got {cu_seqlens.tolist()}")
            if cache is not None and cache.started:
                raise UserInputError("cu_seqlens is for the first (packed) prefill only; continue a cache with [B, T]")
        positions = _positions(input_ids, cu_seqlens, cache)
        x = self.model.embed_tokens(input_ids)
        aux_total = torch.zeros((), device=x.device)
        for layer in self.model.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled() and cache is None:
                x, aux = checkpoint(layer, x, positions, cu_seqlens, None, use_reentrant=False)
            else:
                x, aux = layer(x, positions, cu_seqlens, cache)
            aux_total = aux_total + aux
        self.aux_loss = aux_total / len(self.model.layers)
        if cache is not None:
            cache.advance(cu_seqlens.diff().to(cache.lengths.device) if cu_seqlens is not None
                          and not cache.started else input_ids.shape[1])
        return self.model.norm(x), self.aux_loss

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The fp32 LM head (fp32 under autocast too)."""
        return fp32_head(hidden, self.lm_head.weight)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                cache: HybridCache | None = None) -> CausalLMOutput:
        """Full fp32 logits [B, T, vocab]; for training use ``token_logprobs`` (never materialises them)."""
        hidden, aux = self.hidden_states(input_ids, cu_seqlens, cache)
        return CausalLMOutput(logits=self.logits(hidden), aux_loss=aux)

    def token_logprobs(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None, *,
                       chunk_size: int | None = None, temperature: float = 1.0) -> torch.Tensor:
        """fp32 log p(x_t | x_<t) [B, T], aligned with ``input_ids`` (first token of each sequence: 0).

        The fp32 LM head runs chunk by chunk (see ``score``); differentiable. The load-balancing loss of this
        forward is in ``self.aux_loss``.
        """
        return self.score(input_ids, cu_seqlens, chunk_size=chunk_size, temperature=temperature,
                          with_entropy=False).logprobs

    def score(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None, *, chunk_size: int | None = None,
              with_entropy: bool = True, temperature: float = 1.0) -> TokenLogprobs:
        """Log-probs (and entropies) of every token given the previous ones, from an fp32 LM head in chunks
        (on CUDA under autocast: the bf16x3 split head of ``model/head.py``).

        Input as in ``hidden_states``. Outputs [B, T] aligned with ``input_ids``. ``temperature`` divides the
        logits (pass the sampler's temperature to get the behaviour policy). Differentiable; each chunk's
        [chunk_size, vocab] fp32 logits are recomputed in backward, never stored (the split head keeps bf16
        logits instead, see ``model/head.py``). ``chunk_size`` default: 1,024 rows for the fp32 head,
        ``head.CHUNK_ROWS`` for the split head.
        """
        if (chunk_size is not None and chunk_size < 1) or temperature <= 0:
            raise UserInputError(f"chunk_size must be >= 1 and temperature > 0, got {chunk_size} and {temperature}")
        hidden, aux = self.hidden_states(input_ids, cu_seqlens)
        batch, length = input_ids.shape
        flat_hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        targets = input_ids[:, 1:].reshape(-1)
        weight = self.lm_head.weight.float()
        if use_split_head(hidden):  # CUDA under autocast: bf16x3 on tensor cores (model/head.py)
            lp, ent = head_logprobs(flat_hidden, weight, targets, temperature, chunk_size or head.CHUNK_ROWS)
            logprob_chunks, entropy_chunks = [lp], [ent]
        else:  # fp32 GEMMs (CPU, or CUDA without autocast)
            chunk_size = chunk_size or 1024
            need_grad = torch.is_grad_enabled() and (flat_hidden.requires_grad or weight.requires_grad)
            logprob_chunks, entropy_chunks = [], []
            for start in range(0, targets.shape[0], chunk_size):
                args = (flat_hidden[start:start + chunk_size], weight, targets[start:start + chunk_size], temperature)
                lp, ent = (checkpoint(_chunk_logprobs, *args, use_reentrant=False) if need_grad
                           else _chunk_logprobs(*args))
                logprob_chunks.append(lp)
                entropy_chunks.append(ent)
        zeros = torch.zeros(batch, 1, device=hidden.device)

        def align(chunks: list[torch.Tensor]) -> torch.Tensor:
            flat = torch.cat(chunks) if chunks else torch.zeros(0, device=hidden.device)
            out = torch.cat([zeros, flat.view(batch, length - 1)], dim=1)
            if cu_seqlens is not None:  # a sequence's first token is not predicted by the previous sequence
                first = torch.zeros(length, dtype=torch.bool, device=hidden.device)
                first[cu_seqlens[:-1].to(hidden.device).clamp(max=length - 1)] = True
                out = out.masked_fill(first[None], 0.0)
            return out

        return TokenLogprobs(logprobs=align(logprob_chunks),
                             entropy=align(entropy_chunks) if with_entropy else None, aux_loss=aux)

    # --------------------------------------------------------------------------------- generation
    def new_cache(self, batch_size: int, reserve: int = 0) -> HybridCache:
        """An empty hybrid cache on this model's device, KV in its dtype."""
        weight = self.lm_head.weight
        return HybridCache(self.config, batch_size, device=weight.device, dtype=weight.dtype, reserve=reserve)

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, *,
                 seeds: list[int | None] | None = None) -> list[Generation]:
        """Batched sampling, ``seeds`` one per prompt; see ``lightswe.model.generation.generate``."""
        return generate(self, prompts, sampling, seeds=seeds)

    # ------------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> MiniMaxForCausalLM:
        """Load a directory with ``config.json`` and safetensors weights (released or transformers names)."""
        from lightswe.model.checkpoint import load_pretrained

        return load_pretrained(path, device=device, dtype=dtype)

    def save_pretrained(self, path: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> None:
        """Write ``config.json`` and safetensors shards (+ ``model.safetensors.index.json`` if more than one)."""
        from lightswe.model.checkpoint import save_pretrained

        save_pretrained(self, path, max_shard_bytes=max_shard_bytes)

    # -------------------------------------------------------------------------------------- sizes
    def num_parameters(self, *, active: bool = False, embeddings: bool = True) -> int:
        """Parameter count; ``active`` counts only the top-k experts each token uses; ``embeddings`` False
        leaves out the input embedding and the LM head (MiniMax's 45.9B "active" excludes both)."""
        c = self.config
        total = 0
        for name, param in self.named_parameters(remove_duplicate=True):
            if not embeddings and ("embed_tokens" in name or name.startswith("lm_head")):
                continue
            n = param.numel()
            if active and ".experts." in name:
                n = n * c.num_experts_per_tok / c.num_local_experts
            total += n
        return int(total)

