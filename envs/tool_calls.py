"""Tool calls in model text: one parser per format, pure functions, the one implementation in lightswe.

MiniMax-M1 (what vLLM's ``minimax`` tool parser reads)::

    <think>reasoning, where anything that looks like a tool call is ignored</think>
    <tool_calls>
    {"name": "bash", "arguments": {"command": "ls"}}
    </tool_calls>

one JSON object per line inside the block. Hermes (Qwen, NousResearch)::

    <tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call>

Both parsers return every call in order (an empty list when the text holds none) and raise
:class:`ToolCallFormatError` with what was wrong and the expected form when a block is malformed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_THINK = re.compile(r"<think>.*?(</think>|\Z)", re.S)
_OPEN, _CLOSE = "<tool_calls>", "</tool_calls>"
_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(</tool_call>|\Z)", re.S)

MINIMAX_EXAMPLE = '<tool_calls>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_calls>'
HERMES_EXAMPLE = '<tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call>'


class ToolCallFormatError(ValueError):
    """The text has a tool-call block that cannot be parsed; the message says why and shows the right form."""


@dataclass(kw_only=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def _call_from_json(text: str, example: str) -> ToolCall:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ToolCallFormatError(f"tool call is not valid JSON ({err.msg} at column {err.colno}): {text[:200]!r}; "
                                  f"expected, e.g.:\n{example}") from None
    return _call_from_obj(obj, text, example)


def _call_from_obj(obj: Any, text: str, example: str) -> ToolCall:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ToolCallFormatError(f'a tool call must be a JSON object with a string "name", got {text[:200]!r}; '
                                  f"expected, e.g.:\n{example}")
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):  # some models emit the arguments as a JSON string, as the OpenAI API does
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass
    if not isinstance(arguments, dict):
        raise ToolCallFormatError(f'"arguments" of {obj["name"]!r} must be a JSON object, got {arguments!r:.200}; '
                                  f"expected, e.g.:\n{example}")
    return ToolCall(name=obj["name"], arguments=arguments)


def _outside_think(text: str) -> str:
    return _THINK.sub("", text)


def parse_minimax(text: str) -> list[ToolCall]:
    """Every call in ``<tool_calls>`` blocks outside ``<think>``: JSON objects, one per line.

    Objects are decoded one after another, so a string argument may itself contain ``</tool_calls>``; a block
    cut off after complete objects (a sampler that stops at ``</tool_calls>`` drops it) is accepted.
    """
    text, calls, position = _outside_think(text), [], 0
    decoder = json.JSONDecoder()
    while (start := text.find(_OPEN, position)) >= 0:
        position, found = start + len(_OPEN), 0
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if text.startswith(_CLOSE, position):
                position += len(_CLOSE)
                break
            if position >= len(text):
                if not found:
                    raise ToolCallFormatError(f"<tool_calls> holds no call and is not closed; expected:\n{MINIMAX_EXAMPLE}")
                break
            if text[position] != "{":
                line = text[position:].split("\n", 1)[0]
                raise ToolCallFormatError(f"inside <tool_calls> expected one JSON object per line, got {line[:120]!r}; "
                                          f"expected:\n{MINIMAX_EXAMPLE}")
            try:
                obj, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError:
                line = text[position:].split("\n", 1)[0]
                _call_from_json(line, MINIMAX_EXAMPLE)  # raises with the decoder's message
                raise ToolCallFormatError(f"tool call is not valid JSON: {line[:200]!r}; expected:\n{MINIMAX_EXAMPLE}") from None
            calls.append(_call_from_obj(obj, json.dumps(obj)[:200], MINIMAX_EXAMPLE))
            found += 1
        if not found:
            raise ToolCallFormatError(f"the <tool_calls> block is empty; expected:\n{MINIMAX_EXAMPLE}")
    return calls


def parse_hermes(text: str) -> list[ToolCall]:
    """Every ``<tool_call>{json}</tool_call>`` outside ``<think>``."""
    calls = []
    for match in _HERMES_BLOCK.finditer(_outside_think(text)):
        if not match.group(2):
            raise ToolCallFormatError(f"<tool_call> is not closed with </tool_call>; expected:\n{HERMES_EXAMPLE}")
        calls.append(_call_from_json(match.group(1).strip(), HERMES_EXAMPLE))
    return calls


def format_minimax(calls: list[ToolCall]) -> str:
    """The MiniMax-M1 text for ``calls`` (what the model is trained to emit); ``parse_minimax`` inverts it."""
    lines = [json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) for c in calls]
    return "<tool_calls>\n" + "\n".join(lines) + "\n</tool_calls>"


def format_hermes(calls: list[ToolCall]) -> str:
    return "\n".join("<tool_call>" + json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False)
                     + "</tool_call>" for c in calls)


PARSERS = {"minimax": parse_minimax, "hermes": parse_hermes}
EXAMPLES = {"minimax": MINIMAX_EXAMPLE, "hermes": HERMES_EXAMPLE}
