"""Safetensors checkpoints with the released MiniMax parameter names, ``config.json`` beside them.

Writes ``model.safetensors`` when the weights fit in one shard, else ``model-0000i-of-0000n.safetensors`` with
``model.safetensors.index.json`` (the Hugging Face layout). Reads either layout, with released names
(``block_sparse_moe.experts.E.w1`` ...) or transformers 5.x's fused ones (``mlp.experts.gate_up_proj`` ...);
transformers' derived decay buffers (``slope_rate``, ``*_decay``) are ignored (we compute them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from lightswe.model.config import MiniMaxConfig
from lightswe.model.model import MiniMaxForCausalLM
from safetensors import safe_open
from safetensors.torch import save_file
from lightswe.errors import UserInputError

INDEX = "model.safetensors.index.json"
_DERIVED = re.compile(r"\.self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay)$")


def save_pretrained(model: MiniMaxForCausalLM, path: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save(path / "config.json")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    for old in list(path.glob("model*.safetensors")) + [path / INDEX]:
        old.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (path / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _files(path: Path) -> list[Path]:
    if (path / INDEX).exists():
        weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        return [path / f for f in sorted(set(weight_map.values()))]
    if (path / "model.safetensors").exists():
        return [path / "model.safetensors"]
    raise FileNotFoundError(f"no {INDEX} or model.safetensors in {path}; expected a save_pretrained directory")


def _released_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor under its released name (transformers 5.x fused experts split back into w1/w2/w3)."""
    for file in _files(path):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not __contains__/__iter__
                if _DERIVED.search(name):
                    continue
                tensor = f.get_tensor(name)
                if ".mlp.experts.gate_up_proj" in name:  # [E, 2I, H] -> w1 = [:I], w3 = [I:]
                    prefix = name.replace(".mlp.experts.gate_up_proj", ".block_sparse_moe.experts")
                    w1, w3 = tensor.chunk(2, dim=1)
                    for e in range(tensor.shape[0]):
                        yield f"{prefix}.{e}.w1.weight", w1[e]
                        yield f"{prefix}.{e}.w3.weight", w3[e]
                elif ".mlp.experts.down_proj" in name:  # [E, H, I]
                    prefix = name.replace(".mlp.experts.down_proj", ".block_sparse_moe.experts")
                    for e in range(tensor.shape[0]):
                        yield f"{prefix}.{e}.w2.weight", tensor[e]
                else:
                    yield name.replace(".mlp.gate.", ".block_sparse_moe.gate."), tensor


def load_pretrained(path: str | Path, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> MiniMaxForCausalLM:
    """Build the model on the meta device, then fill every parameter from the files (strict)."""
    path = Path(path)
    config = MiniMaxConfig.load(path)
    with torch.device("meta"):
        model = MiniMaxForCausalLM(config)
    params = dict(model.named_parameters())
    loaded: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, tensor in _released_tensors(path):
        if name not in params:
            unexpected.append(name)
            continue
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise UserInputError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model shape "
                             f"{tuple(params[name].shape)} (does config.json match the weights?)")
        loaded[name] = tensor.to(device=device, dtype=dtype or tensor.dtype)
    if config.tie_word_embeddings:
        loaded.setdefault("lm_head.weight", loaded.get("model.embed_tokens.weight"))
    missing = sorted(set(params) - set(loaded))
    if missing or unexpected:
        raise UserInputError(f"checkpoint {path} does not match the config: missing {missing[:8]} "
                         f"({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})")
    model.load_state_dict(loaded, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model
