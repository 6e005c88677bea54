"""Policies from command-line specs, so that ``lightswe rollout --policy SPEC`` and Ray workers build the same one.

    scripted                               gold-patch scripts of the rollout's tasks; ?tool_format=hermes
    model:tiny | model:/path/to/ckpt       the built-in model; options ?device=cuda&seed=0&max_batch=16
                                           (&batch_invariant=true: bit-identical rows, see ModelPolicy)
    hf:/path/to/ckpt                       a transformers causal LM (Qwen2, Llama, ...) with its ChatML tokenizer;
                                           options ?device=cuda&max_batch=16 (``lightswe.model.hf``)
    openai:http://host:8000/v1             an OpenAI-compatible server; options ?model=NAME&api_key=KEY
    vllm:MODEL | vllm:hf:/path/to/ckpt     vLLM in-process; options become vllm.LLM keyword arguments
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from lightswe.agent.chat import Tokenizer
from lightswe.agent.policies.base import Policy

KINDS = ("scripted", "model", "hf", "openai", "vllm")


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def split_spec(spec: str) -> tuple[str, str, dict]:
    """``"kind:target?k=v&..."`` -> (kind, target, options)."""
    kind = next((k for k in KINDS if spec == k or spec.startswith((k + ":", k + "?"))), None)
    if kind is None:
        raise ValueError(f"policy spec {spec!r}: expected one of {[k + ':...' for k in KINDS]}, e.g. "
                         "'scripted', 'model:tiny', 'openai:http://localhost:8000/v1?model=NAME'")
    target, _, query = spec[len(kind):].removeprefix(":").partition("?")
    return kind, target, {k: _value(v) for k, v in parse_qsl(query)}


def tokenizer_path(spec: str) -> str | None:
    """The tokenizer a policy spec implies: the checkpoint's for ``hf:PATH`` and ``vllm:hf:PATH``, else None
    (the built-in byte tokenizer)."""
    kind, target, _ = split_spec(spec)
    if kind == "hf":
        return target
    if kind == "vllm" and target.startswith("hf:"):
        return target.removeprefix("hf:")
    return None


def make_policy(spec: str, *, tokenizer: Tokenizer, tasks: Sequence = ()) -> Policy:
    kind, target, options = split_spec(spec)
    if kind == "scripted":
        from lightswe.agent.policies.scripted import ScriptedPolicy

        if not tasks:
            raise ValueError("the scripted policy needs the rollout's tasks (it replays their gold patches)")
        return ScriptedPolicy.from_tasks(tasks, tokenizer, **options)
    if not target:
        raise ValueError(f"policy spec {spec!r} names no {kind} target; e.g. '{kind}:...' as in the module docs")
    if kind == "model":
        from lightswe.agent.policies.model import ModelPolicy

        return ModelPolicy.from_spec(target, **options)
    if kind == "hf":
        from lightswe.agent.policies.model import ModelPolicy
        from lightswe.model.hf import HFCausalLM, check_chat_template

        device = options.pop("device", "cpu")
        model = HFCausalLM.from_pretrained("hf:" + target, device=device)
        check_chat_template(model.tokenizer)
        options.setdefault("continuous", False)  # the continuous engine is the built-in model's (CUDA)
        return ModelPolicy(model, name=f"hf:{target}", **options)
    if kind == "openai":
        from lightswe.agent.policies.openai_server import OpenAIPolicy

        return OpenAIPolicy(target, **options)
    from lightswe.agent.policies.vllm_engine import VLLMPolicy

    return VLLMPolicy(target, **options)
