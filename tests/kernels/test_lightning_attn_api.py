"""The public API on machines without a usable GPU: fallback to the reference, and input checks."""

from __future__ import annotations

import itertools

import pytest
import torch
from lightswe.kernels.lightning_attn import lightning_attn, lightning_attn_decode
from lightswe.kernels.lightning_attn.naive import lightning_attn_decode_naive, lightning_attn_recurrent

B, T, H, D = 2, 37, 3, 8


def make(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype)


def slopes(heads: int = H) -> torch.Tensor:
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])


def test_cpu_falls_back_to_reference_with_gradients():
    q, k, v = (make(B, T, H, D, seed=i).requires_grad_() for i in range(3))
    h0 = make(B, H, D, D, seed=3).requires_grad_()
    o, ht = lightning_attn(q, k, v, slopes(), h0)
    o_ref, ht_ref = lightning_attn_recurrent(q, k, v, slopes(), h0)
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ht, ht_ref, rtol=1e-4, atol=1e-4)
    (o.sum() + ht.sum()).backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v, h0))


def test_cpu_varlen_equals_each_sequence():
    bounds = [0, 5, 5 + 20, 40]
    q, k, v = (make(1, bounds[-1], H, D, seed=i) for i in range(3))
    h0 = make(3, H, D, D, seed=4)
    o, ht = lightning_attn(q, k, v, slopes(), h0, torch.tensor(bounds))
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        o_i, s_i = lightning_attn_recurrent(q[:, a:b], k[:, a:b], v[:, a:b], slopes(), h0[i : i + 1])
        torch.testing.assert_close(o[:, a:b], o_i, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ht[i : i + 1], s_i, rtol=1e-4, atol=1e-4)


def test_cpu_varlen_empty_sequences():
    """An empty packed sequence (mid-batch or last) outputs nothing and hands its initial state on as final."""
    bounds = [0, 7, 7, 30, 30]
    q, k, v = (make(1, bounds[-1], H, D, seed=i) for i in range(3))
    h0 = make(4, H, D, D, seed=5)
    o, ht = lightning_attn(q, k, v, slopes(), h0, torch.tensor(bounds))
    assert o.shape == v.shape
    torch.testing.assert_close(ht[1], h0[1], rtol=0, atol=0)
    torch.testing.assert_close(ht[3], h0[3], rtol=0, atol=0)
    o_ref, ht_ref = lightning_attn_recurrent(q[:, 7:30], k[:, 7:30], v[:, 7:30], slopes(), h0[2:3])
    torch.testing.assert_close(o[:, 7:30], o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ht[2:3], ht_ref, rtol=1e-4, atol=1e-4)


def test_cpu_decode_updates_state_in_place():
    q, k, v = (make(B, H, D, seed=i, dtype=torch.bfloat16) for i in range(3))
    state = make(B, H, D, D, seed=5)
    expected_state = state.clone()
    expected = lightning_attn_decode_naive(q, k, v, slopes(), expected_state)
    o = lightning_attn_decode(q, k, v, slopes(), state)
    assert o.dtype == torch.bfloat16
    torch.testing.assert_close(o, expected)
    torch.testing.assert_close(state, expected_state)


def test_cpu_decode_takes_a_v_major_state():
    """A V-major state (each head's matrix stored transposed) is updated in place through its strides: the same
    state and o as the K-major state, and still V-major afterwards."""
    from lightswe.kernels.lightning_attn.decode import is_v_major

    q, k, v = (make(B, H, D, seed=i, dtype=torch.bfloat16) for i in range(3))
    state = make(B, H, D, D, seed=5)
    v_major = state.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert is_v_major(v_major) and not is_v_major(state) and torch.equal(v_major, state)
    o = lightning_attn_decode(q, k, v, slopes(), state)
    o_v = lightning_attn_decode(q, k, v, slopes(), v_major)
    assert is_v_major(v_major) and not torch.equal(v_major, make(B, H, D, D, seed=5))
    torch.testing.assert_close(v_major, state, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(o_v, o)


def test_forcing_triton_without_cuda_says_why(monkeypatch):
    monkeypatch.setenv("LIGHTSWE_LIGHTNING_BACKEND", "triton")
    q, k, v = (make(B, T, H, 16, seed=i) for i in range(3))
    with pytest.raises(RuntimeError, match="CUDA device"):
        lightning_attn(q, k, v, slopes())


def test_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv("LIGHTSWE_LIGHTNING_BACKEND", "cuda")
    q = make(B, T, H, D)
    with pytest.raises(ValueError, match="one of"):
        lightning_attn(q, q, q, slopes())


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((B, T, H, D), (B, T, H, D + 1), (B, T, H, D)), "expected q, k"),
        (((B, T, H, D), (B, T, H, D), (B, T + 1, H, D)), "expected q, k"),
        (((T, H, D), (T, H, D), (T, H, D)), "expected q, k"),
    ],
    ids=["k_dim", "v_length", "rank3"],
)
def test_shape_errors(shapes, match):
    q, k, v = (make(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        lightning_attn(q, k, v, slopes())


def test_dtype_and_slope_and_state_errors():
    q = make(B, T, H, D)
    with pytest.raises(TypeError, match="one dtype"):
        lightning_attn(q, q.half(), q, slopes())
    with pytest.raises(TypeError, match="one dtype"):
        lightning_attn(q.double(), q.double(), q.double(), slopes())
    with pytest.raises(ValueError, match="slope"):
        lightning_attn(q, q, q, slopes(H + 1))
    with pytest.raises(ValueError, match="initial_state"):
        lightning_attn(q, q, q, slopes(), make(B + 1, H, D, D))


def test_varlen_errors():
    q = make(B, T, H, D)
    with pytest.raises(ValueError, match="batch size 1"):
        lightning_attn(q, q, q, slopes(), cu_seqlens=torch.tensor([0, T]))
    q1 = make(1, T, H, D)
    with pytest.raises(ValueError, match="rise from 0"):
        lightning_attn(q1, q1, q1, slopes(), cu_seqlens=torch.tensor([0, T - 1]))
    with pytest.raises(ValueError, match="integer cu_seqlens"):
        lightning_attn(q1, q1, q1, slopes(), cu_seqlens=torch.tensor([0.0, T]))
    with pytest.raises(ValueError, match="initial_state"):
        lightning_attn(q1, q1, q1, slopes(), make(1, H, D, D), cu_seqlens=torch.tensor([0, 4, T]))


def test_decode_state_errors():
    q = make(B, H, D)
    with pytest.raises(TypeError, match="fp32 state"):
        lightning_attn_decode(q, q, q, slopes(), make(B, H, D, D).half())
    # heads and batch swapped; every other column; a V-major view with every other row
    for strided in (make(H, B, D, D).transpose(0, 1), make(B, H, D, 2 * D)[..., ::2],
                    make(B, H, 2 * D, D)[:, :, ::2].transpose(-1, -2)):
        with pytest.raises(TypeError, match="contiguous or V-major"):
            lightning_attn_decode(q, q, q, slopes(), strided)
    with pytest.raises(ValueError, match="state"):
        lightning_attn_decode(q, q, q, slopes(), make(B, H, D, D + 1))
