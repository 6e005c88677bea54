from __future__ import annotations

import pytest
import torch
from lightswe.model import MiniMaxForCausalLM


def test_cached_decode_token_by_token_equals_full_forward(tiny_model):
    """Prefill 21 tokens, then decode 19 one at a time (different per row): logits equal the full forward."""
    ids = torch.randint(0, 263, (2, 40))
    full = tiny_model(ids).logits
    cache = tiny_model.new_cache(2)
    steps = [tiny_model(ids[:, :21], cache=cache).logits]
    steps += [tiny_model(ids[:, t:t + 1], cache=cache).logits for t in range(21, 40)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    assert cache.lengths.tolist() == [40, 40]


def test_cache_continues_with_multi_token_chunks(tiny_model):
    """A cache extended by chunks of several tokens (a new agent turn) equals the full forward."""
    ids = torch.randint(0, 263, (1, 45))
    full = tiny_model(ids).logits
    cache = tiny_model.new_cache(1)
    parts = [tiny_model(ids[:, a:b], cache=cache).logits for a, b in [(0, 10), (10, 11), (11, 30), (30, 45)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


def test_packed_varlen_equals_separate_sequences(tiny_model):
    lengths = [7, 33, 1, 20]
    seqs = [torch.randint(0, 263, (n,)) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed = tiny_model(torch.cat(seqs)[None], cu_seqlens=cu).logits[0]
    separate = torch.cat([tiny_model(s[None]).logits[0] for s in seqs])
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-5)
    lp_packed = tiny_model.token_logprobs(torch.cat(seqs)[None], cu_seqlens=cu)[0]
    lp_separate = torch.cat([tiny_model.token_logprobs(s[None])[0] for s in seqs])
    torch.testing.assert_close(lp_packed, lp_separate, rtol=1e-4, atol=1e-5)
    assert lp_packed[cu[:-1]].eq(0).all()


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_token_logprobs_equal_full_log_softmax(tiny_model, chunk_size):
    ids = torch.randint(0, 263, (2, 30))
    logits = tiny_model(ids).logits
    out = tiny_model.score(ids, chunk_size=chunk_size)
    torch.testing.assert_close(tiny_model.token_logprobs(ids, chunk_size=chunk_size), out.logprobs)
    assert out.logprobs.dtype == torch.float32 and out.logprobs.shape == (2, 30)
    log_probs = torch.log_softmax(logits, dim=-1)
    expected = log_probs[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs[:, 1:], expected, rtol=1e-5, atol=1e-5)
    assert out.logprobs[:, 0].eq(0).all()
    entropy = -(log_probs.exp() * log_probs).sum(-1)[:, :-1]
    torch.testing.assert_close(out.entropy[:, 1:], entropy, rtol=1e-5, atol=1e-5)


def test_token_logprobs_gradient_matches_full_logits(tiny_model):
    ids = torch.randint(0, 263, (1, 25))
    weights = torch.randn(1, 25)
    tiny_model.zero_grad()
    (tiny_model.token_logprobs(ids, chunk_size=4) * weights).sum().backward()
    chunked = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    log_probs = torch.log_softmax(tiny_model(ids).logits, dim=-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    (log_probs * weights[:, 1:]).sum().backward()
    for name, param in tiny_model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(chunked[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_one_optimizer_step_changes_every_parameter(tiny_model):
    tiny_model.train()
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-15)
    ids = torch.randint(0, 263, (1, 120))
    cu = torch.tensor([0, 50, 120])
    logprobs = tiny_model.token_logprobs(ids, cu_seqlens=cu)
    assert tiny_model.aux_loss.requires_grad
    loss = -logprobs.mean() + tiny_model.config.router_aux_loss_coef * tiny_model.aux_loss
    loss.backward()
    optimizer.step()
    unchanged = [n for n, p in tiny_model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged


def test_gradient_checkpointing_gives_same_gradients(tiny_model):
    ids = torch.randint(0, 263, (1, 20))
    tiny_model.token_logprobs(ids).sum().backward()
    plain = [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]
    tiny_model.zero_grad()
    tiny_model.gradient_checkpointing = True
    tiny_model.token_logprobs(ids).sum().backward()
    for a, b in zip(plain, [p.grad for p in tiny_model.parameters() if p.grad is not None]):
        torch.testing.assert_close(a, b)


def test_bad_inputs_say_what_was_expected(tiny_model: MiniMaxForCausalLM):
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        tiny_model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="cu_seqlens"):
        tiny_model(torch.zeros(1, 5, dtype=torch.long), cu_seqlens=torch.tensor([0, 3]))


def test_lm_head_stays_fp32_under_bf16_autocast(tiny_model):
    """The learner runs the body under bf16 autocast; the LM head must still be fp32 (autocast would cast
    F.linear's operands to bf16 and move log-probs by ~1e-2)."""
    with torch.no_grad():
        tiny_model.lm_head.weight.mul_(20)  # logits of a few units, so a bf16 head shows in the log-probs
    ids = torch.randint(0, 263, (2, 40))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, _ = tiny_model.hidden_states(ids)
        scored = tiny_model.score(ids)
        logits = tiny_model.logits(hidden)
    assert logits.dtype == torch.float32
    reference = hidden.double() @ tiny_model.lm_head.weight.double().T  # fp64 head on the same hidden states
    torch.testing.assert_close(logits.double(), reference, rtol=1e-5, atol=1e-5)
    expected = torch.log_softmax(reference, -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(scored.logprobs[:, 1:].double(), expected, rtol=1e-5, atol=1e-5)
