"""The chunk-form decode step's rounded state copy (kernels/lightning_attn/decode.py), on the PyTorch path (CPU)."""

from __future__ import annotations

import pytest
import torch
from lightswe.kernels.lightning_attn.decode import lightning_attn_decode_chunk_form


def _case(rows: int, heads: int, dim: int, block: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn(rows, heads, dim, dim, generator=gen)
    keys, values = (torch.randn(rows, heads, block, dim, generator=gen).to(dtype) for _ in range(2))
    slope = torch.rand(heads, generator=gen) * 0.3
    return gen, slope, state, keys, values


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(("rows", "heads", "dim", "block"), [(3, 2, 16, 8), (2, 3, 24, 16)])
def test_rounded_copy_follows_the_state_and_changes_nothing(dtype, rows, heads, dim, block):
    """Steps across chunk boundaries (odd positions, rows in different chunks): with ``rounded_state`` the outputs,
    state and chunk buffers equal the run without it, and the copy equals state.to(dtype) after every step,
    including the steps that advance the state."""
    gen, slope, state, keys, values = _case(rows, heads, dim, block, dtype)
    plain = [state.clone(), keys.clone(), values.clone()]
    copy = state.to(dtype)
    pos = torch.tensor([block - 3, 1, 2 * block - 1][:rows])
    advanced = 0
    for _ in range(2 * block + 1):
        q, k, v = (torch.randn(rows, heads, dim, generator=gen).to(dtype) for _ in range(3))
        before = state.clone()
        o = lightning_attn_decode_chunk_form(q, k, v, slope, state, keys, values, pos, rounded_state=copy)
        o_plain = lightning_attn_decode_chunk_form(q, k, v, slope, *plain, pos)
        assert torch.equal(o, o_plain) and torch.equal(state, plain[0])
        assert torch.equal(keys, plain[1]) and torch.equal(values, plain[2])
        assert torch.equal(copy, state.to(dtype))
        advanced += int(not torch.equal(before, state))
        pos = pos + 1
    assert advanced >= 2  # chunk-completing steps ran


def test_a_mismatched_copy_is_refused():
    _, slope, state, keys, values = _case(2, 2, 16, 8, torch.bfloat16)
    q = k = v = torch.zeros(2, 2, 16, dtype=torch.bfloat16)
    pos = torch.zeros(2, dtype=torch.long)
    for bad in (state.clone(), state[:1].to(torch.bfloat16), state.to(torch.bfloat16).transpose(2, 3)):
        with pytest.raises(ValueError, match="rounded_state must be a contiguous"):
            lightning_attn_decode_chunk_form(q, k, v, slope, state, keys, values, pos, rounded_state=bad)
