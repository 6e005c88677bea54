"""Tool calls in model text: one parser per format, pure functions, the one implementation in lightswe.

MiniMax-M1 (what vLLM's ``minimax`` tool parser reads)::

    <think>reasoning, where anything that looks like a tool call is ignored</think>
    <tool_calls>
    {"name": "bash", "arguments": {"command": "ls"}}
    </tool_calls>

one JSON object per line inside the block. Hermes (Qwen, NousResearch)::

    <tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call>

Both parsers return every call in order (an empty list when the text holds none) and raise
:class:`ToolCallFormatError` with what was wrong and the expected form when a block is malformed; no input
makes them raise anything else.

Guarantees (tested with property-based tests in ``tests/envs/test_tool_calls.py``):

- ``parse(format(calls)) == calls`` for any names and any argument text, closing tags (``</tool_call>``,
  ``</tool_calls>``) and think tags included: the text is scanned left to right and a call's JSON is decoded
  as JSON (``json.JSONDecoder.raw_decode``), so a tag inside a JSON string is data, never structure.
- Reasoning is recognised only outside calls: a ``<think>`` block is skipped as a whole where it starts
  between calls, and ``<think>``/``</think>`` inside an argument are left as they are (nothing is cut out of
  the text before the calls are decoded).
- ``"arguments"`` may be an object, a JSON string holding an object (the OpenAI API's form), ``null`` or
  absent (no arguments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lightswe.errors import ActionError

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_OPEN, _CLOSE = "<tool_calls>", "</tool_calls>"
_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"

MINIMAX_EXAMPLE = '<tool_calls>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_calls>'
HERMES_EXAMPLE = '<tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call>'
_DECODER = json.JSONDecoder()


class ToolCallFormatError(ActionError):
    """The text has a tool-call block that cannot be parsed; the message says why and shows the right form."""


@dataclass(kw_only=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def _loads(text: str, start: int, example: str) -> tuple[Any, int]:
    """One JSON value of ``text`` at ``start`` and the position after it; ToolCallFormatError if invalid."""
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as err:
        line = text[start:].split("\n", 1)[0]
        raise ToolCallFormatError(f"tool call is not valid JSON ({err.msg} at column {err.pos - start + 1}): "
                                  f"{line[:200]!r}; expected, e.g.:\n{example}") from None
    except RecursionError:
        raise ToolCallFormatError(f"tool call JSON is nested too deeply to read; expected, e.g.:\n{example}") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ToolCallFormatError(f"tool call JSON holds a value Python cannot read ({str(err)[:120]}); "
                                  f"expected, e.g.:\n{example}") from None


def _call_from_obj(obj: Any, example: str) -> ToolCall:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        got = f"an object with \"name\" {_short(obj.get('name'))}" if isinstance(obj, dict) else _short(obj)
        raise ToolCallFormatError(f'a tool call must be a JSON object with a string "name", got {got}; '
                                  f"expected, e.g.:\n{example}")
    arguments = obj.get("arguments")
    if isinstance(arguments, str):  # some models emit the arguments as a JSON string, as the OpenAI API does
        if not arguments.strip():
            arguments = None
        else:
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                pass
    if arguments is None:  # absent or null: a call without arguments
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolCallFormatError(f'"arguments" of {_short(obj["name"])} must be a JSON object, got '
                                  f"{_short(arguments)}; expected, e.g.:\n{example}")
    return ToolCall(name=obj["name"], arguments=arguments)


def _short(value: Any) -> str:
    """A bounded description of a JSON value for an error message (repr of huge or deep values is not)."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)} items"
    if isinstance(value, str):
        return repr(value[:120]) + ("..." if len(value) > 120 else "")
    text = "null" if value is None else repr(value)
    return text[:120]


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _blocks(text: str, open_tag: str):
    """Positions just after each ``open_tag`` outside think blocks; the caller's ``send`` moves the scan on."""
    position = 0
    while True:
        think, block = text.find(_THINK_OPEN, position), text.find(open_tag, position)
        if block < 0:
            return
        if 0 <= think < block:  # a think block starts first: skip it whole (unclosed: the rest is reasoning)
            end = text.find(_THINK_CLOSE, think + len(_THINK_OPEN))
            if end < 0:
                return
            position = end + len(_THINK_CLOSE)
            continue
        position = yield block + len(open_tag)


def parse_minimax(text: str) -> list[ToolCall]:
    """Every call in ``<tool_calls>`` blocks outside ``<think>``: JSON objects, one per line.

    Objects are decoded one after another, so a string argument may itself contain ``</tool_calls>``; a block
    cut off after complete objects (a sampler that stops at ``</tool_calls>`` drops it) is accepted.
    """
    calls: list[ToolCall] = []
    scan = _blocks(text, _OPEN)
    position = next(scan, None)
    while position is not None:
        found = 0
        while True:
            position = _skip_space(text, position)
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
            obj, position = _loads(text, position, MINIMAX_EXAMPLE)
            calls.append(_call_from_obj(obj, MINIMAX_EXAMPLE))
            found += 1
        if not found:
            raise ToolCallFormatError(f"the <tool_calls> block is empty; expected:\n{MINIMAX_EXAMPLE}")
        position = _send(scan, position)
    return calls


def parse_hermes(text: str) -> list[ToolCall]:
    """Every ``<tool_call>{json}</tool_call>`` outside ``<think>``.

    The object is decoded as JSON, so its strings may contain ``</tool_call>``; a call cut off after its
    complete object (a sampler that stops at ``</tool_call>`` drops it) is accepted.
    """
    calls: list[ToolCall] = []
    scan = _blocks(text, _HERMES_OPEN)
    position = next(scan, None)
    while position is not None:
        position = _skip_space(text, position)
        if position >= len(text):
            raise ToolCallFormatError(f"<tool_call> is not closed with </tool_call>; expected:\n{HERMES_EXAMPLE}")
        if text[position] != "{":
            line = text[position:].split("\n", 1)[0]
            raise ToolCallFormatError(f"<tool_call> must hold one JSON object, got {line[:120]!r}; "
                                      f"expected:\n{HERMES_EXAMPLE}")
        obj, position = _loads(text, position, HERMES_EXAMPLE)
        calls.append(_call_from_obj(obj, HERMES_EXAMPLE))
        position = _skip_space(text, position)
        if text.startswith(_HERMES_CLOSE, position):
            position += len(_HERMES_CLOSE)
        elif position < len(text):
            raise ToolCallFormatError(f"expected </tool_call> after the call's JSON object, got "
                                      f"{text[position:position + 60]!r}; expected:\n{HERMES_EXAMPLE}")
        position = _send(scan, position)
    return calls


def _send(scan, position: int) -> int | None:
    try:
        return scan.send(position)
    except StopIteration:
        return None


def call_json(call: ToolCall) -> str:
    """The one JSON object a formatter writes for ``call`` (non-ASCII characters as they are)."""
    return json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)


def format_minimax(calls: list[ToolCall]) -> str:
    """The MiniMax-M1 text for ``calls`` (what the model is trained to emit); ``parse_minimax`` inverts it."""
    return "<tool_calls>\n" + "\n".join(call_json(c) for c in calls) + "\n</tool_calls>"


def format_hermes(calls: list[ToolCall]) -> str:
    """The Hermes text for ``calls``, one ``<tool_call>`` per call; ``parse_hermes`` inverts it."""
    return "\n".join(_HERMES_OPEN + call_json(c) + _HERMES_CLOSE for c in calls)


PARSERS = {"minimax": parse_minimax, "hermes": parse_hermes}
FORMATTERS = {"minimax": format_minimax, "hermes": format_hermes}
EXAMPLES = {"minimax": MINIMAX_EXAMPLE, "hermes": HERMES_EXAMPLE}
