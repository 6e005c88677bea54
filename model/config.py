"""MiniMax-Text-01 / MiniMax-M1 configuration, read from and written to a Hugging Face ``config.json``.

Field names are those of the released checkpoints (``attn_type_list``, ``rotary_dim``,
``layernorm_full_attention_alpha``, ...). ``to_dict`` also writes the names that Hugging Face
transformers 5.x's ``MiniMaxConfig`` reads (``layer_types``, ``full_attn_alpha_factor``, ``rope_parameters``),
so one ``config.json`` loads in both; ``from_dict`` accepts either spelling.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightswe.errors import need

LIGHTNING, SOFTMAX = 0, 1  # attn_type_list codes, as in the released config.json


def _alpha(num_layers: int) -> float:
    """DeepNorm residual scale used by MiniMax: (2 L)^(1/4)."""
    return (2 * num_layers) ** 0.25


@dataclass(kw_only=True, slots=True)
class MiniMaxConfig:
    """Shape and numerics of a MiniMax model. Defaults are the full MiniMax-Text-01 shape."""

    vocab_size: int = 200064
    hidden_size: int = 6144
    intermediate_size: int = 9216
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    head_dim: int = 128
    attn_type_list: list[int] = field(default_factory=lambda: ([LIGHTNING] * 7 + [SOFTMAX]) * 10)
    rotary_dim: int = 64
    rope_theta: float = 10_000_000.0
    rms_norm_eps: float = 1e-5
    num_local_experts: int = 32
    num_experts_per_tok: int = 2
    postnorm: bool = True
    layernorm_full_attention_alpha: float = _alpha(80)
    layernorm_full_attention_beta: float = 1.0
    layernorm_linear_attention_alpha: float = _alpha(80)
    layernorm_linear_attention_beta: float = 1.0
    layernorm_mlp_alpha: float = _alpha(80)
    layernorm_mlp_beta: float = 1.0
    block_size: int = 256
    max_position_embeddings: int = 10_240_000
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    router_aux_loss_coef: float = 0.001
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        """Raises UserInputError (a ValueError) naming the field, its value, the rule and the fix."""
        need(len(self.attn_type_list) == self.num_hidden_layers, "attn_type_list", self.attn_type_list,
             f"has {len(self.attn_type_list)} entries, expected one per layer (num_hidden_layers="
             f"{self.num_hidden_layers})", "one code per layer, or build it with MiniMaxConfig.from_pattern")
        need(all(t in (LIGHTNING, SOFTMAX) for t in self.attn_type_list), "attn_type_list",
             self.attn_type_list, "entries must be 0 (lightning) or 1 (softmax)", "use only 0 and 1")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_attention_heads",
             self.num_attention_heads, f"must be a multiple of num_key_value_heads={self.num_key_value_heads}",
             "change either head count")
        need(self.rotary_dim % 2 == 0 and 0 < self.rotary_dim <= self.head_dim, "rotary_dim", self.rotary_dim,
             f"must be even and in (0, head_dim={self.head_dim}]", "e.g. head_dim // 2")
        need(0 < self.num_experts_per_tok <= self.num_local_experts, "num_experts_per_tok",
             self.num_experts_per_tok, f"must be in [1, num_local_experts={self.num_local_experts}]", "e.g. 2")
        need(self.hidden_act == "silu", "hidden_act", self.hidden_act,
             "only 'silu' is implemented (MiniMax uses it)", "hidden_act='silu'")

    # ----------------------------------------------------------------------------------------- layout
    @property
    def layer_pattern(self) -> str:
        """The layer pattern as a short string: 'L' lightning, 'S' softmax (e.g. 'LLLLLLLS' * 10)."""
        return "".join("LS"[t] for t in self.attn_type_list)

    @classmethod
    def from_pattern(cls, pattern: str, **fields: Any) -> MiniMaxConfig:
        """Build a config from a layer pattern such as 'LLLS' (sets num_hidden_layers and the alphas)."""
        need(bool(pattern) and not set(pattern) - {"L", "S"}, "pattern", pattern,
             "must be a non-empty string of 'L' (lightning) and 'S' (softmax)", "e.g. 'LLLS' * 2")
        alpha = _alpha(len(pattern))
        defaults = {f"layernorm_{k}_alpha": alpha for k in ("full_attention", "linear_attention", "mlp")}
        return cls(num_hidden_layers=len(pattern), attn_type_list=["LS".index(c) for c in pattern],
                   **{**defaults, **fields})

    # ------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """The released MiniMax field names plus the Hugging Face transformers 5.x ``MiniMaxConfig`` ones."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["attn_type_list"] = list(self.attn_type_list)
        out.update(
            architectures=["MiniMaxForCausalLM"],
            model_type="minimax",
            layer_types=["full_attention" if t == SOFTMAX else "linear_attention" for t in self.attn_type_list],
            full_attn_alpha_factor=self.layernorm_full_attention_alpha,
            full_attn_beta_factor=self.layernorm_full_attention_beta,
            linear_attn_alpha_factor=self.layernorm_linear_attention_alpha,
            linear_attn_beta_factor=self.layernorm_linear_attention_beta,
            mlp_alpha_factor=self.layernorm_mlp_alpha,
            mlp_beta_factor=self.layernorm_mlp_beta,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta,
                             "partial_rotary_factor": self.rotary_dim / self.head_dim},
        )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MiniMaxConfig:
        """Read released (``attn_type_list`` ...) or transformers 5.x (``layer_types`` ...) field names."""
        data = dict(data)
        if "attn_type_list" not in data and "layer_types" in data:
            data["attn_type_list"] = [SOFTMAX if t == "full_attention" else LIGHTNING for t in data["layer_types"]]
        hf_names = {"full_attn": "full_attention", "linear_attn": "linear_attention", "mlp": "mlp"}
        for hf, ours in hf_names.items():
            for part in ("alpha", "beta"):
                if f"layernorm_{ours}_{part}" not in data and f"{hf}_{part}_factor" in data:
                    data[f"layernorm_{ours}_{part}"] = data[f"{hf}_{part}_factor"]
        rope = data.get("rope_parameters") or {}
        if "rope_theta" not in data and "rope_theta" in rope:
            data["rope_theta"] = rope["rope_theta"]
        if data.get("head_dim") is None:
            data["head_dim"] = data["hidden_size"] // data["num_attention_heads"]
        if "rotary_dim" not in data:
            data["rotary_dim"] = int(data["head_dim"] * rope.get("partial_rotary_factor", 1.0))
        if "postnorm" not in data and "residual_post_norm" in data:
            data["postnorm"] = data["residual_post_norm"]
        if isinstance(data.get("eos_token_id"), list):
            data["eos_token_id"] = data["eos_token_id"][0] if data["eos_token_id"] else None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> MiniMaxConfig:
        """Read a ``config.json`` file (or the one inside a checkpoint directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return cls.from_dict(json.loads(path.read_text()))

    # ---------------------------------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str) -> MiniMaxConfig:
        """``tiny`` (CPU tests, fits the byte tokenizer), ``small`` (~98M parameters, one GPU), ``minimax-1b``
        (MiniMax-Text-01's proportions at 1.3B total / 0.15B active, one GPU),
        ``minimax-text-01`` (the full 456B shape: build it on the meta device only)."""
        need(name in PRESETS, "preset", name, "unknown preset", f"expected one of {sorted(PRESETS)}")
        return PRESETS[name]()


def _tiny() -> MiniMaxConfig:
    # 272 >= 256 bytes + 7 special tokens of the byte tokenizer. block_size 16 makes short tests cross blocks.
    return MiniMaxConfig.from_pattern(
        "LLLS", vocab_size=272, hidden_size=64, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rotary_dim=8, rope_theta=10_000.0, num_local_experts=4,
        num_experts_per_tok=2, block_size=16, max_position_embeddings=65_536, eos_token_id=256)


def _small() -> MiniMaxConfig:
    # One softmax layer in eight, as in MiniMax-Text-01; 8 experts of top-2; ~98M parameters.
    return MiniMaxConfig.from_pattern(
        "LLLLLLLS", vocab_size=512, hidden_size=768, intermediate_size=512, num_attention_heads=12,
        num_key_value_heads=4, head_dim=64, rotary_dim=32, rope_theta=10_000_000.0, num_local_experts=8,
        num_experts_per_tok=2, block_size=256, max_position_embeddings=1_048_576, eos_token_id=256)


def _minimax_1b() -> MiniMaxConfig:
    # MiniMax-Text-01's proportions at ~1.3B total / ~0.15B active parameters (MiniMax: 456B / 45.9B, 10 %):
    # one softmax layer in eight, head_dim 128, 8 query heads per KV head, MoE intermediate 1.5x hidden,
    # 32 experts of top-2, RoPE on half the head dim, theta 1e7, DeepNorm alphas from the depth.
    return MiniMaxConfig.from_pattern(
        "LLLLLLLS", vocab_size=32_768, hidden_size=1024, intermediate_size=1536, num_attention_heads=8,
        num_key_value_heads=1, head_dim=128, rotary_dim=64, rope_theta=10_000_000.0, num_local_experts=32,
        num_experts_per_tok=2, block_size=256, max_position_embeddings=1_048_576, eos_token_id=256)


PRESETS = {"tiny": _tiny, "small": _small, "minimax-1b": _minimax_1b, "minimax-text-01": MiniMaxConfig}


def checkpoint_problem(path: str | Path) -> str | None:
    """What keeps ``path`` from loading as a lightswe MiniMax checkpoint (``save_pretrained``'s layout), or None;
    cheap and without torch, for refusing a ``--model DIR`` / ``--policy model:DIR`` before any work.

    Checks: ``config.json`` is there, is JSON and reads as a :class:`MiniMaxConfig` (released or transformers
    field names); ``model.safetensors`` or ``model.safetensors.index.json`` is there.
    """
    path = Path(path)
    config = path / "config.json"
    if not config.is_file() and (path / "model.pt").is_file() and (path / "state.json").is_file():
        return (f"{path} is a train run's resume checkpoint (model.pt, optim.pt), not a model folder; the run's "
                f"weights as a model are its final/ (written when the run ends)")
    if not config.is_file():
        return f"{path} has no config.json"
    try:
        data = json.loads(config.read_text())
        kind = str(data.get("model_type") or "minimax") if isinstance(data, dict) else "minimax"
        if "minimax" not in kind.lower():
            return f"{config} describes a {kind!r} model, not MiniMax; a transformers checkpoint loads as hf:{path}"
        MiniMaxConfig.from_dict(data)
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        what = f"missing {err}" if isinstance(err, KeyError) else str(err).splitlines()[0][:160]
        return f"{config} is not a MiniMax config ({what}); a transformers checkpoint loads as hf:{path}"
    if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
        return f"{path} has config.json but no model.safetensors (or model.safetensors.index.json)"
    return None


def hf_checkpoint_problem(path: str | Path, *, kind: str = "hf:") -> str | None:
    """What keeps ``path`` from loading as a transformers checkpoint directory (``hf:DIR``), as ``"WHAT; fix:
    HOW"``, or None; cheap and without torch. A Hugging Face Hub name (``owner/name`` that is no local path) is
    told apart: ``hf:`` loads a folder and downloads nothing. ``kind``: the spec prefix the fix names
    (``"hf:"``, ``"vllm:hf:"``)."""
    import re

    path = Path(path)
    if (path / "config.json").is_file():
        return None
    if not path.exists() and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(path)):
        vllm = "; vllm:NAME loads a Hub name itself" if kind == "vllm:hf:" else ""
        return (f"{path} is not a local folder (a Hugging Face Hub name? {kind} loads a checkpoint directory and "
                f"downloads nothing); fix: hf download {path} --local-dir DIR, then {kind}DIR{vllm}")
    what = "does not exist" if not path.exists() else "is a file" if path.is_file() else "has no config.json"
    return (f"{path} {what}; fix: {kind}DIR, a transformers checkpoint directory (config.json, weights, tokenizer "
            f"files), e.g. one written by save_pretrained")
