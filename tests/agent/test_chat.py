"""Token-space chat glue: decode(token_ids) is the conversation, the mask covers exactly the generated tokens."""

from __future__ import annotations

import pytest
from lightswe.agent.chat import IM_END, Conversation
from lightswe.model import ByteTokenizer


@pytest.fixture
def tok() -> ByteTokenizer:
    return ByteTokenizer()


def test_environment_turns_are_glued_and_unmasked(tok):
    conv = Conversation(tok)
    conv.add("system", "You fix bugs.")
    conv.add("user", "héllo <|im_end|> inside text")  # special text in content round-trips
    assert tok.decode(conv.token_ids) == conv.render()
    assert conv.render().startswith("<|im_start|>system\nYou fix bugs.<|im_end|>\n<|im_start|>user\n")
    assert sum(conv.loss_mask) == 0 and len(conv.logprobs) == len(conv.token_ids)


@pytest.mark.parametrize("ending", ["im_end", "eos", "length", "invalid_utf8"])
def test_generated_tokens_kept_exactly(tok, ending):
    conv = Conversation(tok)
    conv.add("user", "go")
    prompt = conv.start_assistant()
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    generated = tok.encode("<think>hm</think>\n<tool_calls>\n{}\n</tool_calls>")
    if ending == "im_end":
        generated.append(tok.token_id(IM_END))
    elif ending == "eos":
        generated.append(tok.eos_token_id)
    elif ending == "invalid_utf8":
        generated += [0xE2, 0x82]  # a cut multi-byte character, as a sampler can produce
    logprobs = [-0.5 - i / 100 for i in range(len(generated))]
    msg = conv.add_generated(generated, logprobs)
    conv.add("tool", "exit code 0")
    assert tok.decode(conv.token_ids) == conv.render()
    masked = [i for i, m in enumerate(conv.loss_mask) if m]
    start = len(prompt)
    assert masked == list(range(start, start + len(generated)))
    assert conv.token_ids[start:start + len(generated)] == generated
    assert conv.logprobs[start:start + len(generated)] == logprobs
    assert all(lp == 0.0 for lp, m in zip(conv.logprobs, conv.loss_mask) if not m)
    assert msg.finish_reason == ("stop" if ending in ("im_end", "eos") else "length")
    assert msg.content.startswith("<think>hm</think>")
    assert "<|im_end|>" not in msg.content and "<|endoftext|>" not in msg.content


def test_turn_order_is_enforced(tok):
    conv = Conversation(tok)
    with pytest.raises(RuntimeError, match="start_assistant"):
        conv.add_generated([1], [0.0])
    conv.start_assistant()
    with pytest.raises(RuntimeError, match="open"):
        conv.add("tool", "x")
    with pytest.raises(ValueError, match="role"):
        Conversation(tok).add("robot", "x")


def test_room_is_exact_and_drop_last_restores(tok):
    conv = Conversation(tok)
    conv.add("user", "go")
    limit = len(conv.token_ids) + 30
    room = conv.room(limit)
    conv.start_assistant()
    conv.add_generated([65] * room, [-1.0] * room)  # hit the length limit: glue closes the turn
    assert len(conv.token_ids) == limit
    size = len(conv.token_ids)
    conv.add("tool", "a long output")
    assert conv.drop_last().role == "tool"
    assert len(conv.token_ids) == len(conv.loss_mask) == len(conv.logprobs) == size
    assert tok.decode(conv.token_ids) == conv.render()
