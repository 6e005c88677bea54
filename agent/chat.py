"""The chat template as token glue: the conversation is built in token space, never re-tokenised.

A turn is ``<|im_start|>{role}\\n{content}<|im_end|>\\n``. Environment turns (system, user, tool) are encoded
from text with loss mask 0, as data: ``tokenizer.encode_ordinary``, so whatever a file, a command's output or a
task statement holds (``<|im_end|>``, ``<tool_calls>``, ``<think>``...) stays ordinary tokens and can never
become a control token of the template; control ids come only from the glue and from the policy's own
sampled tokens. A lone surrogate in environment text (not a character) is replaced by U+FFFD first, and the
message records the text as encoded. An assistant turn is the glue ``<|im_start|>assistant\\n`` (mask 0), then the
policy's tokens exactly as sampled (mask 1, with their sampler log-probs), including the ``<|im_end|>`` that
ended the turn; if generation stopped without it (length or early stop), the glue ``<|im_end|>`` is added
with mask 0. So ``tokenizer.decode(conversation.token_ids)`` equals ``conversation.render()`` and the mask is 1
on exactly the generated tokens.

Example::

    conv = Conversation(tokenizer)
    conv.add("system", "You are ...")
    conv.add("user", "Fix the bug ...")
    prompt = conv.start_assistant()          # token ids to hand to Policy.generate
    msg = conv.add_generated(tokens, logprobs)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from lightswe.agent.trajectory import Message
from lightswe.errors import UserInputError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant", "tool")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Tokenizer(Protocol):
    """What the agent needs from a tokenizer: ``lightswe.model.tokenizer.Tokenizer`` (mirrored here so that the
    agent loop imports no torch). ``encode`` maps special-token strings to their ids (template glue, a
    policy's markup); ``encode_ordinary`` never does (environment text)."""

    eos_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_ordinary(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_id(self, special: str) -> int: ...


class Conversation:
    """Token ids, loss mask, log-probs and messages of one episode, grown turn by turn."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.im_start, self.im_end = tokenizer.token_id(IM_START), tokenizer.token_id(IM_END)
        self._newline = tokenizer.encode_ordinary("\n")
        self.token_ids: list[int] = []
        self.loss_mask: list[int] = []
        self.logprobs: list[float] = []
        self.messages: list[Message] = []
        self._open: int | None = None  # start of an assistant turn awaiting its tokens

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an assistant turn."""
        return sorted({self.im_end, self.tokenizer.eos_token_id})

    def room(self, limit: int) -> int:
        """Tokens an assistant turn may generate so that the whole turn, glue included, fits in ``limit``."""
        return limit - len(self.token_ids) - len(self._header("assistant")) - 1 - len(self._newline)

    def _glue(self, ids: Sequence[int]) -> None:
        self.token_ids.extend(ids)
        self.loss_mask.extend([0] * len(ids))
        self.logprobs.extend([0.0] * len(ids))

    def _header(self, role: str) -> list[int]:
        if role not in ROLES:
            raise UserInputError(f"role must be one of {ROLES}, got {role!r}")
        return [self.im_start, *self.tokenizer.encode_ordinary(role + "\n")]

    def add(self, role: str, content: str, *, markup: bool = False, **fields) -> Message:
        """Append an environment-side turn (mask 0); ``content`` is data, never control tokens.

        ``markup=True`` is for the harness's own system prompt only (never environment text): its tool-call
        example is then encoded with the control tokens the policy must emit (``<tool_calls>`` ...), so the one
        example in context has the same tokens as the scripted warm-start turns. Chat glue (``<|im_start|>``,
        ``<|im_end|>``) inside it is still refused.
        """
        if self._open is not None:
            raise RuntimeError("an assistant turn is open: call add_generated() before adding another turn")
        content = _SURROGATE.sub("\ufffd", content)
        body = self.tokenizer.encode(content) if markup else self.tokenizer.encode_ordinary(content)
        if markup and {self.im_start, self.im_end} & set(body):
            raise UserInputError(f"the {role} prompt holds chat glue (<|im_start|>/<|im_end|>); remove it")
        start = len(self.token_ids)
        self._glue([*self._header(role), *body, self.im_end, *self._newline])
        message = Message(role=role, content=content, start=start, end=len(self.token_ids), **fields)
        self.messages.append(message)
        return message

    def start_assistant(self) -> list[int]:
        """Append the assistant header and return the full prompt for the policy."""
        if self._open is None:
            self._open = len(self.token_ids)
            self._glue(self._header("assistant"))
        return list(self.token_ids)

    def add_generated(self, tokens: Sequence[int], logprobs: Sequence[float], *,
                      finish_reason: str | None = None) -> Message:
        """Append the policy's tokens as sampled (mask 1); close the turn with glue if it did not stop."""
        if self._open is None:
            raise RuntimeError("call start_assistant() before add_generated()")
        if len(tokens) != len(logprobs):
            raise UserInputError(f"one log-prob per token expected, got {len(tokens)} tokens, {len(logprobs)} log-probs")
        self.token_ids.extend(int(t) for t in tokens)
        self.loss_mask.extend([1] * len(tokens))
        self.logprobs.extend(float(x) for x in logprobs)
        stopped = bool(tokens) and tokens[-1] in self.stop_token_ids
        body = list(tokens[:-1]) if stopped else list(tokens)
        if not stopped:
            self._glue([self.im_end])
        self._glue(self._newline)
        if finish_reason is None:
            finish_reason = "stop" if stopped else "length"
        message = Message(role="assistant", content=self.tokenizer.decode(body), start=self._open,
                          end=len(self.token_ids), finish_reason=finish_reason)
        self._open = None
        self.messages.append(message)
        return message

    def drop_last(self) -> Message:
        """Remove the last (environment) turn, e.g. a tool output that does not fit in the context."""
        if self._open is not None or not self.messages:
            raise RuntimeError("no closed turn to drop")
        message = self.messages.pop()
        del self.token_ids[message.start:], self.loss_mask[message.start:], self.logprobs[message.start:]
        return message

    def render(self) -> str:
        """The conversation as text; equals ``tokenizer.decode(self.token_ids)``."""
        return "".join(self.render_message(m) for m in self.messages)

    def render_message(self, message: Message) -> str:
        """One turn as text. An assistant turn ended by eos shows eos where ``<|im_end|>`` would be."""
        ids = self.token_ids[message.start:message.end]
        closer = IM_END
        if message.role == "assistant" and len(ids) >= 2 and ids[-2] == self.tokenizer.eos_token_id != self.im_end:
            closer = self.tokenizer.decode([self.tokenizer.eos_token_id])
        return f"{IM_START}{message.role}\n{message.content}{closer}\n"
