"""lightswe's MiniMax (Text-01 / M1 architecture) as a vLLM model, for vLLM versions without one (>= 0.24).

Registered by ``lightswe.model.vllm_plugin.register`` (the ``vllm.general_plugins`` entry point) under the
architecture names the checkpoints carry (``MiniMaxForCausalLM``, ``MiniMaxText01ForCausalLM``,
``MiniMaxM1ForCausalLM``). The numerics are the learner's (``lightswe.model.layers``): lightning layers use vLLM's
``MiniMaxText01LinearAttention`` for its projections and its recurrent-state slots (vLLM's hybrid cache, one
[H, D, D] fp32 state per sequence), with lightswe's kernels (``lightswe.kernels.lightning_attn``: Triton on
CUDA, the PyTorch reference on CPU) in place of vLLM's Triton-only ones, lightswe's decay slopes and
output-norm eps; softmax layers use vLLM's paged ``Attention`` with partial NeoX RoPE; the MoE is lightswe's
(fp32 softmax router, top-k renormalised, SwiGLU experts). Parameters keep the released names, so
``save_pretrained`` checkpoints load as they are and ``push_weights`` works. Tensor parallel size 1 only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from lightswe.kernels.lightning_attn import lightning_attn, lightning_attn_decode
from lightswe.model.layers import LIGHTNING_NORM_EPS, RMSNorm, SparseMoE, lightning_slope
from torch import nn

from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mamba.linear.minimax_linear_attn import (
    MiniMaxText01LinearAttention,
    linear_attention_prefill_and_mix,
)
from vllm.model_executor.layers.mamba.mamba_utils import (
    MambaStateCopyFuncCalculator,
    MambaStateDtypeCalculator,
    MambaStateShapeCalculator,
)
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from lightswe.errors import UserInputError


def _attn_types(config) -> list[int]:
    """0 = lightning, 1 = softmax, per layer (``attn_type_list``, else transformers' ``layer_types``)."""
    types = getattr(config, "attn_type_list", None)
    if types:
        return list(types)
    return [0 if t == "linear_attention" else 1 for t in config.layer_types]


class LightningAttention(MiniMaxText01LinearAttention):
    """vLLM's MiniMax linear-attention layer (projections, state slots, metadata) on lightswe's kernels."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__(config, vllm_config, prefix)
        self.tp_slope = lightning_slope(self.num_heads, self.layer_idx, self.num_hidden_layers)  # the learner's
        self.norm.variance_epsilon = LIGHTNING_NORM_EPS
        loader = getattr(self.norm.weight, "weight_loader", None)
        if isinstance(loader, functools.partial):  # vLLM's in-place reload reads loader.__name__ (a partial has none)
            loader.__name__ = getattr(loader.func, "__name__", "weight_loader")

    def _prefix(self, q, k, v, state, slope, block_size, layer_idx=None, **kwargs) -> torch.Tensor:
        """One sequence's prefill: q, k, v [H, n, D] fp32, ``state`` [H, D, D] updated in place; -> [n, H D]."""
        o, final = lightning_attn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                  slope.to(q.device), initial_state=state[None].float())
        state.copy_(final[0])
        return o[0].reshape(o.shape[1], -1)

    def _prefill_and_mix_infer(self, q, k, v, kv_cache, state_indices_tensor, attn_metadata):
        return linear_attention_prefill_and_mix(
            q=q, k=k, v=v, kv_cache=kv_cache, state_indices_tensor=state_indices_tensor,
            attn_metadata=attn_metadata, slope_rate=self.tp_slope, block_size=self.BLOCK,
            decode_fn=self._decode_infer, prefix_fn=self._prefix, layer_idx=self.layer_idx)

    def _decode_infer(self, q, k, v, kv_cache, state_indices_tensor, attn_metadata):
        n = attn_metadata.num_decode_tokens
        slots = state_indices_tensor[:attn_metadata.num_decodes]
        state = kv_cache[slots].float().contiguous()  # [B, H, D, D]
        o = lightning_attn_decode(q[:n].contiguous(), k[:n].contiguous(), v[:n].contiguous(),
                                  self.tp_slope.to(q.device), state)
        kv_cache[slots] = state.to(kv_cache.dtype)
        return o.reshape(n, -1)


class SoftmaxAttention(nn.Module):
    """GQA softmax attention, partial NeoX RoPE (``rotary_dim`` of ``head_dim``), scale 1/sqrt(head_dim)."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        heads, kv, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.q_size, self.kv_size = heads * dim, kv * dim
        self.q_proj = nn.Linear(config.hidden_size, heads * dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv * dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv * dim, bias=False)
        self.o_proj = nn.Linear(heads * dim, config.hidden_size, bias=False)
        theta = getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]
        self.rotary_emb = get_rope(dim, max_position=config.max_position_embeddings, is_neox_style=True,
                                   rope_parameters={"rope_type": "default", "rope_theta": theta,
                                                    "partial_rotary_factor": config.rotary_dim / dim},
                                   dtype=torch.float32)
        self.attn = Attention(heads, dim, dim**-0.5, num_kv_heads=kv, cache_config=vllm_config.cache_config,
                              prefix=f"{prefix}.attn")

    def forward(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        q, k = self.rotary_emb(positions, self.q_proj(hidden_states), self.k_proj(hidden_states))
        return self.o_proj(self.attn(q, k, self.v_proj(hidden_states)))


class DecoderLayer(nn.Module):
    """lightswe's post-norm block (``lightswe.model.layers.DecoderLayer``) with vLLM's attention layers."""

    def __init__(self, config, vllm_config: VllmConfig, layer: int, kind: int, prefix: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == 0:
            self.self_attn = LightningAttention(config, vllm_config, prefix=f"{prefix}.self_attn")
        else:
            self.self_attn = SoftmaxAttention(config, vllm_config, prefix=f"{prefix}.self_attn")
        name = "linear_attention" if kind == 0 else "full_attention"
        self.attn_alpha = getattr(config, f"layernorm_{name}_alpha", 1.0)
        self.attn_beta = getattr(config, f"layernorm_{name}_beta", 1.0)
        self.mlp_alpha = getattr(config, "layernorm_mlp_alpha", 1.0)
        self.mlp_beta = getattr(config, "layernorm_mlp_beta", 1.0)
        self.postnorm = getattr(config, "postnorm", False)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.block_sparse_moe = SparseMoE(config)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.input_layernorm(x)
        if self.kind == 0:
            attn = torch.zeros_like(h)
            self.self_attn(hidden_states=h, output=attn, positions=positions)
        else:
            attn = self.self_attn(h, positions)
        x = self.attn_alpha * (h if self.postnorm else x) + self.attn_beta * attn
        h = self.post_attention_layernorm(x)
        moe, _ = self.block_sparse_moe(h)
        return self.mlp_alpha * (h if self.postnorm else x) + self.mlp_beta * moe


class MiniMaxModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "model") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        if vllm_config.parallel_config.tensor_parallel_size != 1:
            raise UserInputError("lightswe's MiniMax vLLM model runs with tensor_parallel_size=1 only")
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, vllm_config, i, kind, prefix=f"{prefix}.layers.{i}")
                                    for i, kind in enumerate(_attn_types(config)))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, positions)
        return self.norm(x)


class MiniMaxForCausalLM(nn.Module, HasInnerState, IsHybrid):
    """The vLLM model class (see the module docs)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.config = vllm_config.model_config.hf_config
        self.model = MiniMaxModel(vllm_config=vllm_config, prefix=f"{prefix}.model" if prefix else "model")
        self.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
        self.logits_processor = LogitsProcessor(self.config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds=None, **kwargs) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden_states.float(), self.lm_head.weight.float())  # the learner's fp32 head

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name not in params:
                if name.endswith(("slope_rate", "query_decay", "key_decay", "diagonal_decay")):
                    continue  # transformers' derived buffers
                raise UserInputError(f"{name}: not a parameter of lightswe's MiniMax vLLM model")
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(name)
        if "lm_head.weight" not in loaded and getattr(self.config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight
            loaded.add("lm_head.weight")
        return loaded

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig):
        config = vllm_config.model_config.hf_config
        return MambaStateShapeCalculator.linear_attention_state_shape(
            num_heads=config.num_attention_heads, tp_size=1, head_dim=config.head_dim)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig):
        return MambaStateDtypeCalculator.linear_attention_state_dtype(
            vllm_config.model_config.dtype, vllm_config.cache_config.mamba_cache_dtype)

    @classmethod
    def get_mamba_state_copy_func(cls):
        return MambaStateCopyFuncCalculator.linear_attention_state_copy_func()
