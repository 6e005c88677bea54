"""Split-K decode attention (kernels/decode_attn.py): the Triton kernel against the SDPA reference."""

from __future__ import annotations

import math

import pytest
import torch
from lightswe.kernels.decode_attn import decode_attention, decode_attention_reference


def test_reference_equals_attention_over_each_rows_prefix():
    """CPU: the masked reference equals plain softmax attention over each row's first L_s keys (GQA)."""
    torch.manual_seed(0)
    q, keys, values = torch.randn(3, 6, 16), torch.randn(3, 2, 40, 16), torch.randn(3, 2, 40, 16)
    lengths = torch.tensor([1, 17, 40])
    out = decode_attention(q, keys, values, lengths)
    for s, n in enumerate(lengths.tolist()):
        k = keys[s, :, :n].repeat_interleave(3, 0)  # [H, n, D]
        v = values[s, :, :n].repeat_interleave(3, 0)
        p = torch.softmax(q[s, :, None] @ k.transpose(1, 2) / math.sqrt(16), -1)
        torch.testing.assert_close(out[s], (p @ v)[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(12, 4, 64), (64, 8, 128), (4, 2, 16)])
def test_triton_decode_attention_matches_reference(heads, kv_heads, dim):
    torch.manual_seed(0)
    rows, capacity = 5, 2100
    q = torch.randn(rows, heads, dim, device="cuda", dtype=torch.bfloat16)
    keys = torch.randn(rows, kv_heads, capacity, dim, device="cuda", dtype=torch.bfloat16)
    values = torch.randn_like(keys)
    lengths = torch.tensor([1, 63, 512, 513, 2100], device="cuda", dtype=torch.int32)
    out = decode_attention(q, keys, values, lengths)
    ref = decode_attention_reference(q.double(), keys.double(), values.double(), lengths, 1 / math.sqrt(dim))
    err = (out.double() - ref).norm() / ref.norm()
    assert out.dtype == torch.bfloat16 and err < 1e-2, err
