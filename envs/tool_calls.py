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
_MINIMAX_BLOCK = re.compile(r"<tool_calls>(.*?)(</tool_calls>|\Z)", re.S)
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
    """Every call in ``<tool_calls>`` blocks outside ``<think>``; one JSON object per non-empty line."""
    calls = []
    for match in _MINIMAX_BLOCK.finditer(_outside_think(text)):
        if not match.group(2):
            raise ToolCallFormatError(f"<tool_calls> is not closed with </tool_calls>; expected:\n{MINIMAX_EXAMPLE}")
        body = match.group(1).strip()
        if not body:
            raise ToolCallFormatError(f"the <tool_calls> block is empty; expected:\n{MINIMAX_EXAMPLE}")
        decoder = json.JSONDecoder()
        position = 0
        while position < len(body):  # objects one per line; a pretty-printed object spanning lines also works
            while position < len(body) and body[position].isspace():
                position += 1
            if position >= len(body):
                break
            try:
                _, end = decoder.raw_decode(body, position)
            except json.JSONDecodeError:
                end = body.find("\n", position)
                end = len(body) if end < 0 else end
            calls.append(_call_from_json(body[position:end], MINIMAX_EXAMPLE))
            position = end
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
