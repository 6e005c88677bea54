"""vLLM plugin (entry point ``vllm.general_plugins`` -> ``lightswe.model.vllm_plugin:register``): serves lightswe's
MiniMax checkpoints (and MiniMax-Text-01 / M1 ones) on vLLM versions whose registry no longer has the model.

vLLM calls ``register()`` in every process it starts (engine core, workers) once the package is installed
(``pip install -e .`` writes the entry point); in-process users may call it themselves before ``vllm.LLM``.
Where vLLM still has its own MiniMax class (<= 0.23.0) it is left in place.
"""

from __future__ import annotations


def register() -> None:
    """Register ``lightswe.model.vllm_minimax.MiniMaxForCausalLM`` for the MiniMax architecture names vLLM lacks."""
    from lightswe.model.vllm_minimax_names import ARCHITECTURES

    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    for arch in ARCHITECTURES:
        if arch not in supported:  # lazy: the model module is imported only when vLLM builds the model
            ModelRegistry.register_model(arch, "lightswe.model.vllm_minimax:MiniMaxForCausalLM")
