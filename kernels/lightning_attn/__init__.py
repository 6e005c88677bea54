"""Lightning attention (MiniMax): the public entry points.

``lightning_attn`` (prefill / training, autograd) and ``lightning_attn_decode`` (one token, in-place state).
On CUDA they run the Triton kernels; elsewhere they fall back to the plain PyTorch references in naive.py.
"""

from lightswe.kernels.lightning_attn.api import lightning_attn, lightning_attn_decode

__all__ = ["lightning_attn", "lightning_attn_decode"]
