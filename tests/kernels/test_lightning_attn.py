"""Triton lightning attention against the PyTorch reference, forward and backward (GPU only).

Errors are ||kernel - reference|| / ||reference|| per tensor, the reference computed in fp32 from the same
(rounded) inputs. Tolerances are named per dtype and tensor: bf16 products round the chunk scores and the
state to 8 mantissa bits; fp32 inputs go through tf32 matrix products.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import pytest
import torch
from lightswe.kernels.lightning_attn import lightning_attn, lightning_attn_decode
from lightswe.kernels.lightning_attn.naive import lightning_attn_chunked, lightning_attn_decode_naive

pytestmark = pytest.mark.gpu

TOL = {
    torch.bfloat16: {"o": 1e-2, "ht": 1e-2, "dq": 1.5e-2, "dk": 1.5e-2, "dv": 1.5e-2, "dh0": 1e-2},
    torch.float32: {"o": 3e-3, "ht": 3e-3, "dq": 3e-3, "dk": 3e-3, "dv": 3e-3, "dh0": 3e-3},
}
HEADS, DIM = 4, 128


@pytest.fixture(autouse=True)
def _fixed_config(monkeypatch):
    """One kernel config per variant: the tests check numerics, tuning only costs compile time."""
    monkeypatch.setenv("LIGHTSWE_LIGHTNING_AUTOTUNE", "0")
    monkeypatch.setenv("LIGHTSWE_LIGHTNING_BACKEND", "triton")


def minimax_slopes(heads: int, layer: int, layers: int) -> torch.Tensor:
    """s_h = 2^(-8(h+1)/H) * (1 - l/(L-1) + 1e-5), as in DESIGN.md."""
    base = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])
    return (base * (1 - layer / (layers - 1) + 1e-5)).float().cuda()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(got).all(), "non-finite values in kernel output"
    return ((got.float() - ref.float()).norm() / ref.float().norm()).item()


def inputs(batch: int, length: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    # silu outputs, as the model feeds them: mostly positive, magnitude ~0.5
    make = lambda: torch.nn.functional.silu(
        torch.randn(batch, length, HEADS, DIM, device="cuda", generator=gen)).to(dtype)
    return make(), make(), make(), gen


def reference(q, k, v, slope, h0, bounds):
    """fp32 reference with autograd; per packed sequence when bounds is given."""
    leaves = [x.detach().float().requires_grad_() for x in (q, k, v)]
    h0r = None if h0 is None else h0.detach().clone().requires_grad_()
    if bounds is None:
        o, ht = lightning_attn_chunked(*leaves, slope, h0r)
    else:
        outs, states = [], []
        for i, (a, b) in enumerate(itertools.pairwise(bounds)):
            init = None if h0r is None else h0r[i : i + 1]
            o_i, s_i = lightning_attn_chunked(*(x[:, a:b] for x in leaves), slope, init)
            outs.append(o_i)
            states.append(s_i)
        o, ht = torch.cat(outs, 1), torch.cat(states, 0)
    return o, ht, leaves, h0r


def check_against_reference(q, k, v, slope, h0, cu_seqlens, use_final_state: bool):
    dtype = q.dtype
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    h0k = None if h0 is None else h0.detach().clone().requires_grad_()
    o, ht = lightning_attn(*leaves, slope, h0k, cu_seqlens)
    bounds = None if cu_seqlens is None else cu_seqlens.tolist()
    o_ref, ht_ref, ref_leaves, h0r = reference(q, k, v, slope, h0, bounds)
    do = torch.randn_like(o_ref)
    dht = torch.randn_like(ht_ref) if use_final_state else None
    loss = (o.float() * do).sum() + ((ht * dht).sum() if use_final_state else 0)
    loss_ref = (o_ref * do).sum() + ((ht_ref * dht).sum() if use_final_state else 0)
    loss.backward()
    loss_ref.backward()
    assert o.dtype == dtype and ht.dtype == torch.float32
    got = {"o": o, "ht": ht, "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}
    ref = {"o": o_ref, "ht": ht_ref, "dq": ref_leaves[0].grad, "dk": ref_leaves[1].grad,
           "dv": ref_leaves[2].grad}
    if h0 is not None:
        got["dh0"], ref["dh0"] = h0k.grad, h0r.grad
    errors = {name: rel_err(got[name], ref[name]) for name in got}
    bad = {n: e for n, e in errors.items() if not e <= TOL[dtype][n]}
    assert not bad, f"over tolerance {TOL[dtype]}: {bad} (all errors {errors})"


@pytest.mark.parametrize("length", [63, 500, 1000, 2100], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("with_states", [False, True], ids=["no_state", "states"])
def test_bf16_forward_backward(length, with_states):
    q, k, v, gen = inputs(2, length, torch.bfloat16, seed=length)
    slope = minimax_slopes(HEADS, layer=0, layers=80)
    h0 = torch.randn(2, HEADS, DIM, DIM, device="cuda", generator=gen) if with_states else None
    check_against_reference(q, k, v, slope, h0, None, use_final_state=with_states)


@pytest.mark.parametrize("layer", [0, 40, 79], ids=lambda n: f"layer{n}")
def test_fp32_forward_backward(layer):
    q, k, v, gen = inputs(2, 500, torch.float32, seed=layer)
    slope = minimax_slopes(HEADS, layer=layer, layers=80)
    h0 = torch.randn(2, HEADS, DIM, DIM, device="cuda", generator=gen)
    check_against_reference(q, k, v, slope, h0, None, use_final_state=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_varlen_matches_per_sequence(dtype):
    """Packed sequences of 1 token, exactly one chunk, empty (mid-batch and last), short and long."""
    bounds = [0, 1, 64, 64, 127, 627, 1000, 1063, 1191, 2400, 2400]
    q, k, v, gen = inputs(1, bounds[-1], dtype, seed=7)
    slope = minimax_slopes(HEADS, layer=10, layers=80)
    h0 = torch.randn(len(bounds) - 1, HEADS, DIM, DIM, device="cuda", generator=gen)
    cu = torch.tensor(bounds, device="cuda", dtype=torch.int32)
    check_against_reference(q, k, v, slope, h0, cu, use_final_state=True)


def test_packed_equals_padded_batch():
    """Two equal-length sequences packed with cu_seqlens give the batched kernel's results."""
    q, k, v, _ = inputs(2, 300, torch.bfloat16, seed=3)
    slope = minimax_slopes(HEADS, layer=5, layers=80)
    o_b, ht_b = lightning_attn(q, k, v, slope)
    cu = torch.tensor([0, 300, 600], device="cuda", dtype=torch.int64)
    o_p, ht_p = lightning_attn(*(x.reshape(1, 600, HEADS, DIM) for x in (q, k, v)), slope, cu_seqlens=cu)
    torch.testing.assert_close(o_p.reshape(2, 300, HEADS, DIM), o_b, rtol=0, atol=0)
    torch.testing.assert_close(ht_p, ht_b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_decode_matches_reference_and_updates_in_place(dtype):
    gen = torch.Generator(device="cuda").manual_seed(11)
    slope = minimax_slopes(HEADS, layer=0, layers=80)
    state = torch.randn(3, HEADS, DIM, DIM, device="cuda", generator=gen)
    state_ref = state.clone()
    for _ in range(4):
        q, k, v = (torch.randn(3, HEADS, DIM, device="cuda", generator=gen).to(dtype) for _ in range(3))
        o = lightning_attn_decode(q, k, v, slope, state)
        o_ref = lightning_attn_decode_naive(q, k, v, slope, state_ref)
        assert o.dtype == dtype
        assert rel_err(o, o_ref) <= TOL[dtype]["o"]
        assert rel_err(state, state_ref) <= 1e-6


def test_decode_continues_prefill():
    """Prefill of T tokens, then one decode step, equals the output at T+1 of a full prefill."""
    q, k, v, _ = inputs(2, 257, torch.bfloat16, seed=5)
    slope = minimax_slopes(HEADS, layer=20, layers=80)
    o_full, ht_full = lightning_attn(q, k, v, slope)
    _, state = lightning_attn(q[:, :256], k[:, :256], v[:, :256], slope)
    o_step = lightning_attn_decode(q[:, 256], k[:, 256], v[:, 256], slope, state)
    assert rel_err(o_step, o_full[:, 256]) <= TOL[torch.bfloat16]["o"]
    assert rel_err(state, ht_full) <= TOL[torch.bfloat16]["ht"]


def test_cuda_dispatch_uses_triton(monkeypatch):
    """On CUDA the API runs the Triton kernels (not the reference) and agrees with it."""
    from lightswe.kernels.lightning_attn import chunk

    calls = []
    real = chunk.lightning_attn_fwd
    monkeypatch.setattr(chunk, "lightning_attn_fwd", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v, _ = inputs(1, 128, torch.bfloat16, seed=9)
    slope = minimax_slopes(HEADS, layer=0, layers=80)
    o, _ = lightning_attn(q, k, v, slope)
    assert calls, "lightning_attn on CUDA did not reach the Triton forward"
    monkeypatch.setenv("LIGHTSWE_LIGHTNING_BACKEND", "reference")
    o_ref, _ = lightning_attn(q, k, v, slope)
    assert rel_err(o, o_ref) <= TOL[torch.bfloat16]["o"]


N_CONFIGS = 6


def test_every_autotuned_config_rounds_alike():
    """Every config the autotuner may pick (forward and backward) applies the decays on the fp32 products /
    narrower operands (DECAY_OUT) with 64-token chunks: the rounding decode.py's chunk-form step reproduces."""
    from lightswe.kernels.lightning_attn import chunk

    for kernel in (chunk._fwd_kernel, chunk._bwd_kernel):
        assert kernel.configs and all(c.kwargs["BT"] == 64 and c.kwargs["DECAY_OUT"] for c in kernel.configs)


# Packed sequences of odd lengths: one token, one chunk and one token more, empty, a chunk less one, several chunks.
VARLEN_BOUNDS = [0, 1, 66, 66, 129, 500]


def _config_results(fwd_config, bwd_config) -> dict[str, torch.Tensor]:
    """o, final state and the gradients of q, k, v and the initial state with the kernels pinned to one config,
    on the packed bf16 batch VARLEN_BOUNDS (H=4, D=128: few programs, so no config is pruned)."""
    from lightswe.kernels.lightning_attn import chunk

    q, k, v, gen = inputs(1, VARLEN_BOUNDS[-1], torch.bfloat16, seed=17)
    slope = minimax_slopes(HEADS, layer=30, layers=80)
    h0 = torch.randn(len(VARLEN_BOUNDS) - 1, HEADS, DIM, DIM, device="cuda", generator=gen)
    cu = torch.tensor(VARLEN_BOUNDS, device="cuda", dtype=torch.int32)
    do = torch.randn(v.shape, device="cuda", generator=gen).to(v.dtype)  # seeded: the same for every config
    dht = torch.randn(h0.shape, device="cuda", generator=gen)
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, h0)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIGHTSWE_LIGHTNING_FWD", "triton")  # the plain forward with this config, not the Gluon one
        patch.setattr(chunk._fwd_kernel, "configs", [fwd_config])
        patch.setattr(chunk._bwd_kernel, "configs", [bwd_config])
        o, ht = lightning_attn(*leaves[:3], slope, leaves[3], cu)
        torch.autograd.backward((o, ht), (do, dht))
    return {"o": o, "ht": ht, **{n: x.grad for n, x in zip(("dq", "dk", "dv", "dh0"), leaves)}}


def test_packed_launch_order_changes_no_bit(monkeypatch):
    """The kernels run a packed batch's sequences longest first (chunk._seq_order); the order programs run in must
    change nothing: o, the final states and every gradient equal, bit for bit, a run in the given order and one in
    reverse (initial states and final-state gradients per sequence, so a misplaced state index shows)."""
    from lightswe.kernels.lightning_attn import chunk

    runs = {}
    for name, order in (("longest first", chunk._seq_order), ("given", lambda cu: None if cu is None else
                        torch.arange(cu.numel() - 1, device=cu.device, dtype=torch.int32)),
                        ("reversed", lambda cu: None if cu is None else
                         torch.arange(cu.numel() - 2, -1, -1, device=cu.device, dtype=torch.int32))):
        monkeypatch.setattr(chunk, "_seq_order", order)
        usable = lambda configs: next(c for c in configs if chunk._has_tma() or not c.kwargs["TMA"])
        runs[name] = _config_results(usable(chunk._fwd_kernel.configs), usable(chunk._bwd_kernel.configs))
    first = runs.pop("longest first")
    for name, this in runs.items():
        differ = [n for n in first if not torch.equal(first[n], this[n])]
        assert not differ, f"sequences run in {name} order change {differ}"


@pytest.mark.parametrize("index", range(N_CONFIGS), ids=lambda i: f"config{i}")
def test_every_tuned_config(index, monkeypatch):
    """Each autotuning config (TMA or pointer loads, slice widths, pipelining depth) computes the same function
    (config i of the forward and of the backward, i modulo each kernel's count, against the reference), and gives
    the first config's bits: o, the final state and every gradient, over packed sequences of odd lengths. So the
    autotuner's pick (timer noise) changes no result bit."""
    from lightswe.kernels.lightning_attn import chunk

    fwd, bwd = chunk._fwd_kernel.configs, chunk._bwd_kernel.configs
    assert max(len(fwd), len(bwd)) == N_CONFIGS, "N_CONFIGS must equal the longest config list"
    fwd_i, bwd_i = fwd[index % len(fwd)], bwd[index % len(bwd)]
    if not chunk._has_tma() and (fwd_i.kwargs["TMA"] or bwd_i.kwargs["TMA"]):
        pytest.skip("tensor-descriptor (TMA) configs need compute capability 9.0+")
    usable = lambda configs: next(c for c in configs if chunk._has_tma() or not c.kwargs["TMA"])
    first, this = _config_results(usable(fwd), usable(bwd)), _config_results(fwd_i, bwd_i)
    monkeypatch.setenv("LIGHTSWE_LIGHTNING_FWD", "triton")
    monkeypatch.setattr(chunk._fwd_kernel, "configs", [fwd_i])
    monkeypatch.setattr(chunk._bwd_kernel, "configs", [bwd_i])
    q, k, v, gen = inputs(1, 500, torch.bfloat16, seed=100 + index)
    slope = minimax_slopes(HEADS, layer=30, layers=80)
    h0 = torch.randn(1, HEADS, DIM, DIM, device="cuda", generator=gen)
    check_against_reference(q, k, v, slope, h0, None, use_final_state=True)
    differ = {n: (first[n] != this[n]).float().mean().item() for n in first if not torch.equal(first[n], this[n])}
    assert not differ, f"forward {fwd_i} / backward {bwd_i} differ from config 0 (fraction of elements): {differ}"


def _forward(q, k, v, slope, h0, cu, backend: str):
    """o and the final state of the forward alone through the API, LIGHTSWE_LIGHTNING_FWD=backend."""
    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setenv("LIGHTSWE_LIGHTNING_FWD", backend)
        return lightning_attn(q, k, v, slope, h0, cu)


@pytest.mark.parametrize("bv", [64, 32], ids=lambda b: f"BV{b}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gluon_forward_equals_the_plain_kernel(packed, dtype, bv, monkeypatch):
    """The Gluon forward (gluon_fwd.py, Hopper) computes the function (fp32 reference) and gives the plain kernel's
    bits: o and the final state, over packed sequences of odd lengths with initial states (VARLEN_BOUNDS) and a
    padded batch of an odd length without them, bf16 and fp16, the default state-slice width (BV 64, through the
    API's dispatch) and BV 32 (launched directly). So decode.py's chunk-form step, which reproduces the plain
    kernel's rounding, matches it too; LIGHTSWE_LIGHTNING_FWD=triton runs the plain kernel instead."""
    from lightswe.kernels.lightning_attn import chunk

    if chunk._gluon_bv(torch.empty(1, device="cuda", dtype=dtype), 1, HEADS, DIM, DIM) is None:
        pytest.skip("the Gluon forward needs Triton's Gluon dialect and compute capability 9.x")
    if packed:
        q, k, v, gen = inputs(1, VARLEN_BOUNDS[-1], dtype, seed=41)
        h0 = torch.randn(len(VARLEN_BOUNDS) - 1, HEADS, DIM, DIM, device="cuda", generator=gen)
        cu = torch.tensor(VARLEN_BOUNDS, device="cuda", dtype=torch.int32)
    else:
        q, k, v, gen = inputs(3, 321, dtype, seed=42)
        h0, cu = None, None
    slope = minimax_slopes(HEADS, layer=20, layers=80)
    calls = []
    real = chunk._launch_gluon_fwd
    monkeypatch.setattr(chunk, "_launch_gluon_fwd", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
    o_plain, ht_plain = _forward(q, k, v, slope, h0, cu, "triton")
    assert not calls, "LIGHTSWE_LIGHTNING_FWD=triton ran the Gluon kernel"
    if bv == 64:
        o, ht = _forward(q, k, v, slope, h0, cu, "auto")
        assert calls == [64], "the API's forward did not run the Gluon kernel (BV 64)"
    else:
        n = q.shape[0] if cu is None else cu.numel() - 1
        o, ht = torch.empty_like(v), torch.empty(n, HEADS, DIM, DIM, device="cuda")
        chunk._launch_gluon_fwd(bv, q, k, v, o, slope, h0, ht, cu, chunk._seq_order(cu), q.shape[1], n, HEADS, DIM,
                                DIM, True)
    o_ref, ht_ref, _, _ = reference(q, k, v, slope, h0, None if cu is None else cu.tolist())
    errors = {"o": rel_err(o, o_ref), "ht": rel_err(ht, ht_ref)}
    assert all(errors[n] <= TOL[torch.bfloat16][n] for n in errors), f"Gluon forward vs fp32 reference: {errors}"
    differ = {n: (a != b).float().mean().item() for n, a, b in (("o", o, o_plain), ("ht", ht, ht_plain))
              if not torch.equal(a, b)}
    assert not differ, f"Gluon forward BV {bv} differs from the plain kernel (fraction of elements): {differ}"


def test_lightning_fwd_choice_is_checked(monkeypatch):
    """A misspelt LIGHTSWE_LIGHTNING_FWD is refused in one line naming the accepted values (not run as auto)."""
    q, k, v, _ = inputs(1, 64, torch.bfloat16, seed=3)
    monkeypatch.setenv("LIGHTSWE_LIGHTNING_FWD", "glun")
    with pytest.raises(ValueError, match="LIGHTSWE_LIGHTNING_FWD must be 'auto' or 'triton'"):
        lightning_attn(q, k, v, minimax_slopes(HEADS, layer=0, layers=80))


@pytest.mark.parametrize("batch", [1, 8, 16, 32, 64])
def test_decode_every_batch_config(batch):
    """Each decode launch config (chosen by B * H) matches the reference."""
    # B * H spans the DECODE_CONFIGS thresholds as in the benchmark (H = 64)
    _decode_matches_the_reference(lightning_attn_decode, batch, heads=64, layer=0, steps=1)


def _decode_matches_the_reference(decode, batch: int, *, heads: int, layer: int, steps: int) -> None:
    """``steps`` bf16 decode steps of ``decode(q, k, v, slope, state)`` from a random fp32 state: o and the state
    updated in place equal the PyTorch reference's."""
    gen = torch.Generator(device="cuda").manual_seed(batch)
    slope = minimax_slopes(heads, layer=layer, layers=80)
    state = torch.randn(batch, heads, DIM, DIM, device="cuda", generator=gen)
    state_ref = state.clone()
    for _ in range(steps):
        q, k, v = (torch.randn(batch, heads, DIM, device="cuda", generator=gen).to(torch.bfloat16)
                   for _ in range(3))
        o = decode(q, k, v, slope, state)
        o_ref = lightning_attn_decode_naive(q, k, v, slope, state_ref)
        assert rel_err(o, o_ref) <= TOL[torch.bfloat16]["o"]
        assert rel_err(state, state_ref) <= 1e-6


def _decode_sweep_ids():
    from lightswe.kernels.lightning_attn.decode import DECODE_SWEEP

    return DECODE_SWEEP


@pytest.mark.parametrize("config", _decode_sweep_ids(), ids=str)
@pytest.mark.parametrize("batch", [3, 8], ids=lambda b: f"B{b}")
def test_decode_every_sweep_config(config, batch):
    """Every launch shape the decode sweep measures (one program per tile or persistent, streaming or not)
    updates the state and computes o as the reference; B=3 leaves the persistent grids' last tiles partial."""
    from lightswe.kernels.lightning_attn.decode import lightning_attn_decode_triton

    _decode_matches_the_reference(functools.partial(lightning_attn_decode_triton, config=config), batch,
                                  heads=64 if batch == 8 else 5, layer=3, steps=2)


def _v_major_sweep_ids():
    from lightswe.kernels.lightning_attn.decode import V_MAJOR_DECODE_SWEEP

    return V_MAJOR_DECODE_SWEEP


@pytest.mark.parametrize("config", _v_major_sweep_ids(), ids=str)
@pytest.mark.parametrize("batch, heads, dk, dv", [(3, 5, 128, 128), (8, 64, 128, 128), (2, 3, 64, 64), (2, 3, 16, 256),
                                                  (2, 3, 256, 32)], ids=["B3H5", "B8H64", "D64", "K16V256", "K256V32"])
def test_decode_v_major_state_gives_the_k_major_bits(config, batch, heads, dk, dv):
    """A V-major state (decode.is_v_major) through every V_MAJOR_DECODE_SWEEP launch: after three steps the state
    holds exactly the K-major default's bits (the same fp32 operations per element) and stays V-major, o is
    within the reference's tolerance; odd tile counts (B=3, H=5), D=64 (BV capped at V), K != V both ways."""
    from lightswe.kernels.lightning_attn.decode import is_v_major, lightning_attn_decode_triton

    gen = torch.Generator(device="cuda").manual_seed(batch * heads)
    slope = minimax_slopes(heads, layer=5, layers=80)
    k_major = torch.randn(batch, heads, dk, dv, device="cuda", generator=gen)
    v_major = k_major.transpose(-1, -2).contiguous().transpose(-1, -2)
    reference = k_major.clone()
    assert is_v_major(v_major)
    for _ in range(3):
        q, k = (torch.randn(batch, heads, dk, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
        v = torch.randn(batch, heads, dv, device="cuda", generator=gen).to(torch.bfloat16)
        o = lightning_attn_decode_triton(q, k, v, slope, v_major, config)
        lightning_attn_decode_triton(q, k, v, slope, k_major)
        o_ref = lightning_attn_decode_naive(q, k, v, slope, reference)
        assert rel_err(o, o_ref) <= TOL[torch.bfloat16]["o"]
    assert is_v_major(v_major)
    assert torch.equal(v_major, k_major), f"{(v_major != k_major).float().mean().item():.2e} of the state differs"
    assert rel_err(v_major, reference) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_decode_api_takes_a_v_major_state(batch, dtype):
    """lightning_attn_decode on CUDA with a V-major state: the V-major kernel (default config by B * H) in place,
    o (in q's dtype) and the state as the reference's; launch shapes it cannot take are refused in one line."""
    from lightswe.kernels.lightning_attn.decode import DecodeConfig, lightning_attn_decode_triton

    gen = torch.Generator(device="cuda").manual_seed(batch)
    slope = minimax_slopes(64, layer=0, layers=80)
    state = torch.randn(batch, 64, DIM, DIM, device="cuda", generator=gen).transpose(-1, -2)
    reference = state.clone()
    q, k, v = (torch.randn(batch, 64, DIM, device="cuda", generator=gen).to(dtype) for _ in range(3))
    o = lightning_attn_decode(q, k, v, slope, state)
    o_ref = lightning_attn_decode_naive(q, k, v, slope, reference)
    assert o.dtype == dtype
    assert rel_err(o, o_ref) <= TOL[torch.bfloat16 if dtype == torch.float16 else dtype]["o"]
    assert rel_err(state, reference) <= 1e-6
    for config, out in ((DecodeConfig(64, 8, per_sm=2), None), (DecodeConfig(64, 8, pdl=2), None),
                        (DecodeConfig(64, 8), torch.empty_like(state))):
        with pytest.raises(ValueError, match="V-major state takes one program per tile"):
            lightning_attn_decode_triton(q, k, v, slope, state, config, state_out=out)


@pytest.mark.parametrize("pdl", [0, 1, 2], ids=lambda n: f"pdl{n}")
@pytest.mark.parametrize("bv, warps", [(32, 2), (64, 8)], ids=["BV32", "BV64"])
def test_decode_to_a_separate_state_out(bv, warps, pdl):
    """``state_out``: the updated state written there (the reference's), ``state`` left unchanged, o as the
    reference's; B=3, H=5 (odd tile counts); a state_out of the wrong dtype, shape or config is refused."""
    from lightswe.kernels.lightning_attn.decode import DecodeConfig, lightning_attn_decode_triton

    gen = torch.Generator(device="cuda").manual_seed(31)
    slope = minimax_slopes(5, layer=7, layers=80)
    state = torch.randn(3, 5, DIM, DIM, device="cuda", generator=gen)
    before, out = state.clone(), torch.full_like(state, float("nan"))
    q, k, v = (torch.randn(3, 5, DIM, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3))
    config = DecodeConfig(bv, warps, pdl=pdl)
    o = lightning_attn_decode_triton(q, k, v, slope, state, config, state_out=out)
    s_ref = state.clone()
    o_ref = lightning_attn_decode_naive(q, k, v, slope, s_ref)
    assert torch.equal(state, before)
    assert rel_err(out, s_ref) <= 1e-6 and rel_err(o, o_ref) <= TOL[torch.bfloat16]["o"]
    for bad, cfg in ((out.double(), config), (out[:2], config), (out, DecodeConfig(32, 2, bk=32))):
        with pytest.raises(ValueError, match="state_out"):
            lightning_attn_decode_triton(q, k, v, slope, state, cfg, state_out=bad)


def test_programmatic_dependent_launch_is_on_where_the_driver_keeps_it_in_graphs():
    """The decode steps launch as programmatic dependents only on sm90+ with a CUDA 12.3+ driver (decode._has_pdl):
    the driver's version must be readable here, or every pdl config silently runs as a plain launch."""
    from lightswe.kernels.lightning_attn import decode

    version = decode._cuda_driver_version()
    assert version >= 11000, f"cuDriverGetVersion gave {version}"
    expected = torch.cuda.get_device_capability(0)[0] >= 9 and version >= 12030
    assert decode._has_pdl(0) == expected


@pytest.mark.parametrize("pdl, v_major", [(1, False), (2, False), (1, True)], ids=["pdl1", "pdl2", "pdl1-v-major"])
def test_decode_programmatic_dependent_launch_chained_in_a_cuda_graph(pdl, v_major):
    """Programmatic dependent launches back to back, nothing between them, eagerly and replayed in a CUDA graph:
    pdl 1 on ONE state (each step must wait for the previous one's writes before loading), pdl 2 alternating
    two states (its state load before the wait is valid when the kernel just before writes another state: the
    step before that has completed, as each step releases the next only after its own wait). 6 steps, B=8,
    H=64 (512 programs per step): o and the states equal the reference's after every replay. v_major: the same
    with a V-major state (_decode_v_major_kernel, its default launch)."""
    from lightswe.kernels.lightning_attn.decode import DecodeConfig, lightning_attn_decode_triton

    gen = torch.Generator(device="cuda").manual_seed(41)
    slope = minimax_slopes(64, layer=1, layers=80)
    steps, n_states = 6, (1 if pdl == 1 else 2)
    states = [torch.randn(8, 64, DIM, DIM, device="cuda", generator=gen) for _ in range(n_states)]
    if v_major:
        states = [s.transpose(-1, -2) for s in states]
    qkv = [[torch.randn(8, 64, DIM, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3)]
           for _ in range(steps)]
    config = None if v_major else DecodeConfig(32, 2, pdl=pdl)
    outs = [None] * steps

    def run():
        for t, (q, k, v) in enumerate(qkv):
            outs[t] = lightning_attn_decode_triton(q, k, v, slope, states[t % n_states], config)

    refs = [s.clone() for s in states]

    def check():
        for t, (q, k, v) in enumerate(qkv):
            o_ref = lightning_attn_decode_naive(q, k, v, slope, refs[t % n_states])
            assert rel_err(outs[t], o_ref) <= TOL[torch.bfloat16]["o"], f"step {t}"
        for s, r in zip(states, refs, strict=True):
            assert rel_err(s, r) <= 1e-6

    run()  # eager (also compiles before capture)
    check()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # capture runs nothing: states and refs stay in step
        run()
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        check()


@pytest.mark.parametrize("batch, heads", [(8, 64), (3, 5)], ids=["B8H64", "B3H5"])
def test_decode_register_cap_gives_the_uncapped_bits(batch, heads):
    """DecodeConfig.maxnreg only caps ptxas's registers per thread (the default: 64 at BV 64 / 8 warps, so that 4
    programs fit on a multiprocessor instead of 3): o and the updated state are bit-identical to the uncapped
    launch's, plain and as a dependent launch; a cap on a config that is not one program per tile is refused."""
    from lightswe.kernels.lightning_attn.decode import DecodeConfig, lightning_attn_decode_triton

    gen = torch.Generator(device="cuda").manual_seed(53)
    slope = minimax_slopes(heads, layer=5, layers=80)
    state = torch.randn(batch, heads, DIM, DIM, device="cuda", generator=gen)
    q, k, v = (torch.randn(batch, heads, DIM, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3))
    results = []
    for config in (DecodeConfig(64, 8), DecodeConfig(64, 8, maxnreg=64), DecodeConfig(64, 8, pdl=1, maxnreg=64)):
        s = state.clone()
        results.append((lightning_attn_decode_triton(q, k, v, slope, s, config), s))
    for o, s in results[1:]:
        assert torch.equal(o, results[0][0]) and torch.equal(s, results[0][1])
    with pytest.raises(ValueError, match="maxnreg"):
        lightning_attn_decode_triton(q, k, v, slope, state.clone(), DecodeConfig(64, 8, bk=32, maxnreg=64))


@pytest.mark.parametrize("rows, maxnreg", [(32, 0), (16, 64), (64, 0)], ids=["rows32", "rows16cap64", "rows64"])
def test_decode_row_sub_tiles_keep_the_state_bits(rows, maxnreg):
    """DecodeConfig.rows (the tile loaded as sub-tiles of ``rows`` rows from one base pointer): the updated state
    bit-identical to the default launch's (same arithmetic per element), in place and to ``state_out``, o as the
    reference's (its rows summed in another order); B=3, H=5 and B=8, H=64 with a dependent launch. Rows that do
    not divide K, or with streaming stores or another launch shape, are refused."""
    from lightswe.kernels.lightning_attn.decode import DecodeConfig, lightning_attn_decode_triton

    for batch, heads in ((3, 5), (8, 64)):
        gen = torch.Generator(device="cuda").manual_seed(59 + batch)
        slope = minimax_slopes(heads, layer=9, layers=80)
        state = torch.randn(batch, heads, DIM, DIM, device="cuda", generator=gen)
        q, k, v = (torch.randn(batch, heads, DIM, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3))
        default = state.clone()
        lightning_attn_decode_triton(q, k, v, slope, default, DecodeConfig(64, 8, pdl=1))
        s_ref = state.clone()
        o_ref = lightning_attn_decode_naive(q, k, v, slope, s_ref)
        config = DecodeConfig(64, 8, pdl=1, rows=rows, maxnreg=maxnreg)
        in_place, out = state.clone(), torch.full_like(state, float("nan"))
        o = lightning_attn_decode_triton(q, k, v, slope, in_place, config)
        o_out = lightning_attn_decode_triton(q, k, v, slope, state, config, state_out=out)
        assert torch.equal(in_place, default) and torch.equal(out, default) and torch.equal(o_out, o)
        assert rel_err(o, o_ref) <= TOL[torch.bfloat16]["o"] and rel_err(in_place, s_ref) <= 1e-6
    for bad in (DecodeConfig(64, 8, rows=48), DecodeConfig(64, 8, rows=32, stream=True),
                DecodeConfig(64, 8, rows=32, bk=32)):
        with pytest.raises(ValueError, match="rows"):
            lightning_attn_decode_triton(q, k, v, slope, state.clone(), bad)


def _chunk_form_sweep():
    from lightswe.kernels.lightning_attn.decode import CHUNK_FORM_SWEEP

    return CHUNK_FORM_SWEEP


@pytest.mark.parametrize("rounded", [False, True], ids=["fp32-state", "bf16-copy"])
@pytest.mark.parametrize("config", _chunk_form_sweep(), ids=str)
def test_chunk_form_decode_every_config(config, rounded):
    """The sampler's chunk-form step (H=64, D=128, 64-token chunks), each launch config, reading the fp32 state or
    its rounded copy (``rounded_state``), against its PyTorch reference over steps inside a chunk and across chunk
    boundaries (rows at positions 0, 31, 62, 63, 100): outputs, the in-place chunk buffers, the state advanced on
    each chunk's last token and the rounded copy kept equal to it."""
    from lightswe.kernels.lightning_attn.decode import (lightning_attn_decode_chunk_form,
                                                        lightning_attn_decode_chunk_form_reference)

    gen = torch.Generator(device="cuda").manual_seed(21)
    rows, heads, block = 5, 64, 64
    slope = minimax_slopes(heads, layer=2, layers=80)
    state = torch.randn(rows, heads, DIM, DIM, device="cuda", generator=gen)
    copy = state.to(torch.bfloat16) if rounded else None
    keys, values = (torch.randn(rows, heads, block, DIM, device="cuda", generator=gen).to(torch.bfloat16)
                    for _ in range(2))
    ref = [state.clone(), keys.clone(), values.clone()]
    pos = torch.tensor([0, 31, 62, 63, 100], device="cuda")
    for _ in range(3):
        q, k, v = (torch.nn.functional.silu(torch.randn(rows, heads, DIM, device="cuda", generator=gen))
                   .to(torch.bfloat16) for _ in range(3))
        plain = lightning_attn_decode_chunk_form(q, k, v, slope, state.clone(), keys.clone(), values.clone(), pos,
                                                 config=config)
        o = lightning_attn_decode_chunk_form(q, k, v, slope, state, keys, values, pos, rounded_state=copy,
                                             config=config)
        o_ref = lightning_attn_decode_chunk_form_reference(q, k, v, slope, *ref, pos)
        assert rel_err(o, o_ref) <= 2e-3
        assert rel_err(state, ref[0]) <= 1e-5  # tensor-core against einsum fp32 summation order
        assert torch.equal(keys, ref[1]) and torch.equal(values, ref[2])
        assert torch.equal(o, plain)  # the copy holds the bits the fp32 path rounds to
        if rounded:
            assert torch.equal(copy, state.to(torch.bfloat16))
        pos = pos + 1


@pytest.mark.parametrize("pdl", [1, 2], ids=lambda n: f"pdl{n}")
def test_chunk_form_decode_dependent_launches_in_a_cuda_graph(pdl):
    """The chunk-form step as a programmatic dependent launch, 70 steps across a chunk end (rows at positions 0,
    30, 63) on the same buffers, eagerly and replayed in a CUDA graph, against the reference: pdl 1 back to back
    (each step must wait for the previous step's state, copy and chunk rows); pdl 2 (position, copy and chunk
    rows loaded before the wait) with the engine's order, a kernel writing q, k, v between the steps."""
    from lightswe.kernels.lightning_attn.decode import (CHUNK_FORM_CONFIGS, lightning_attn_decode_chunk_form,
                                                        lightning_attn_decode_chunk_form_reference)

    gen = torch.Generator(device="cuda").manual_seed(23)
    rows, heads, block, steps = 3, 64, 64, 70
    slope = minimax_slopes(heads, layer=4, layers=80)
    state = torch.randn(rows, heads, DIM, DIM, device="cuda", generator=gen)
    copy = state.to(torch.bfloat16)
    keys, values = (torch.randn(rows, heads, block, DIM, device="cuda", generator=gen).to(torch.bfloat16)
                    for _ in range(2))
    start = torch.tensor([0, 30, 63], device="cuda")
    pos = start.clone()
    inputs_ = torch.nn.functional.silu(torch.randn(steps, 3, rows, heads, DIM, device="cuda", generator=gen)
                                       ).to(torch.bfloat16)
    qkv = torch.empty_like(inputs_[0])  # the step's q, k, v, written by a kernel before each step (pdl 2)
    config = dataclasses.replace(CHUNK_FORM_CONFIGS[0][1], pdl=pdl)
    outs = torch.empty(steps, rows, heads, DIM, device="cuda", dtype=torch.bfloat16)
    buffers = (state, copy, keys, values)
    initial = [b.clone() for b in buffers]

    def run():
        pos.copy_(start)
        for t in range(steps):
            if pdl == 2:
                qkv.copy_(inputs_[t])
                q, k, v = qkv.unbind(0)
            else:
                q, k, v = inputs_[t].unbind(0)
            outs[t] = lightning_attn_decode_chunk_form(q, k, v, slope, state, keys, values, pos, rounded_state=copy,
                                                       config=config)
            pos.add_(1)

    def check():
        ref = [initial[0].clone(), initial[2].clone(), initial[3].clone()]
        for t in range(steps):
            o_ref = lightning_attn_decode_chunk_form_reference(*inputs_[t].unbind(0), slope, *ref, start + t)
            assert rel_err(outs[t], o_ref) <= 2e-3, f"step {t}"
        assert rel_err(state, ref[0]) <= 1e-5 and torch.equal(copy, state.to(torch.bfloat16))
        assert torch.equal(keys, ref[1]) and torch.equal(values, ref[2])

    run()
    check()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for _ in range(2):
        for b, init in zip(buffers, initial, strict=True):
            b.copy_(init)
        graph.replay()
        torch.cuda.synchronize()
        check()


@pytest.mark.parametrize("rounded", [False, True], ids=["fp32-state", "fp16-copy"])
def test_chunk_form_decode_fp16_other_shape(rounded):
    """fp16, H=5, D=64 (the default launch config, BV capped at D), 70 steps from odd positions across two chunk
    boundaries: outputs and the advanced state against the reference, the rounded copy equal to the state's."""
    from lightswe.kernels.lightning_attn.decode import (lightning_attn_decode_chunk_form,
                                                        lightning_attn_decode_chunk_form_reference)

    gen = torch.Generator(device="cuda").manual_seed(5)
    rows, heads, dim, block = 3, 5, 64, 64
    slope = minimax_slopes(heads, layer=7, layers=80)
    state = torch.randn(rows, heads, dim, dim, device="cuda", generator=gen)
    copy = state.half() if rounded else None
    keys, values = (torch.randn(rows, heads, block, dim, device="cuda", generator=gen).half() for _ in range(2))
    ref = [state.clone(), keys.clone(), values.clone()]
    pos = torch.tensor([3, 50, 127], device="cuda", dtype=torch.int32)
    for _ in range(70):
        q, k, v = (torch.nn.functional.silu(torch.randn(rows, heads, dim, device="cuda", generator=gen)).half()
                   for _ in range(3))
        o = lightning_attn_decode_chunk_form(q, k, v, slope, state, keys, values, pos, rounded_state=copy)
        o_ref = lightning_attn_decode_chunk_form_reference(q, k, v, slope, *ref, pos)
        assert o.dtype == torch.float16 and rel_err(o, o_ref) <= 2e-3
        assert rel_err(state, ref[0]) <= 1e-5 and torch.equal(keys, ref[1]) and torch.equal(values, ref[2])
        if rounded:
            assert torch.equal(copy, state.half())
        pos = pos + 1
