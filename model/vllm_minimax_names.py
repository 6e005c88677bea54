"""The architecture names lightswe's vLLM plugin serves (importable without vLLM)."""

ARCHITECTURES = ("MiniMaxForCausalLM", "MiniMaxText01ForCausalLM", "MiniMaxM1ForCausalLM")
