"""Tool-call parsers: MiniMax-M1 ``<tool_calls>`` blocks and Hermes ``<tool_call>`` tags (pure, no Docker)."""

from __future__ import annotations

import pytest

from lightswe.envs.tool_calls import (
    ToolCall,
    ToolCallFormatError,
    format_hermes,
    format_minimax,
    parse_hermes,
    parse_minimax,
)


def test_minimax_one_call_per_line():
    text = ('Let me look.\n<tool_calls>\n{"name": "bash", "arguments": {"command": "ls -la"}}\n'
            '{"name": "view", "arguments": {"path": "a.py", "start_line": 3}}\n</tool_calls>')
    assert parse_minimax(text) == [ToolCall(name="bash", arguments={"command": "ls -la"}),
                                   ToolCall(name="view", arguments={"path": "a.py", "start_line": 3})]


def test_minimax_ignores_calls_inside_think():
    text = ('<think>maybe <tool_calls>\n{"name": "submit", "arguments": {}}\n</tool_calls> no</think>\n'
            '<tool_calls>\n{"name": "bash", "arguments": {"command": "pytest -x"}}\n</tool_calls>')
    assert [c.name for c in parse_minimax(text)] == ["bash"]
    assert parse_minimax("<think>only thinking <tool_calls>\n{\"name\": \"x\"}\n</tool_calls>") == []


def test_minimax_multiline_json_and_string_arguments():
    text = '<tool_calls>\n{"name": "create",\n "arguments": "{\\"path\\": \\"x\\", \\"content\\": \\"a\\\\nb\\"}"}\n</tool_calls>'
    assert parse_minimax(text) == [ToolCall(name="create", arguments={"path": "x", "content": "a\nb"})]


def test_minimax_block_cut_at_the_stop_string_is_accepted():
    assert parse_minimax('<tool_calls>\n{"name": "submit", "arguments": {}}\n') == [ToolCall(name="submit")]


def test_no_call_is_an_empty_list():
    assert parse_minimax("I am done thinking.") == [] and parse_hermes("plain text") == []


@pytest.mark.parametrize("text, expected", [
    ("<tool_calls>\n{name: bash}\n</tool_calls>", "not valid JSON"),
    ('<tool_calls>\n{"name": "bash", "arguments": {"command": "l', "not valid JSON"),
    ("<tool_calls>\nbash ls\n</tool_calls>", "one JSON object per line"),
    ("<tool_calls>\n\n</tool_calls>", "empty"),
    ('<tool_calls>\n{"arguments": {}}\n</tool_calls>', 'string "name"'),
    ('<tool_calls>\n{"name": "bash", "arguments": [1]}\n</tool_calls>', "must be a JSON object"),
], ids=["bad-json", "cut-off", "not-json", "empty", "no-name", "arguments-list"])
def test_minimax_malformed_says_why_and_shows_the_form(text, expected):
    with pytest.raises(ToolCallFormatError, match=expected) as info:
        parse_minimax(text)
    assert "<tool_calls>" in str(info.value)  # the expected form is shown


def test_hermes():
    text = '<think><tool_call>{"name": "x"}</tool_call></think><tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call>'
    assert parse_hermes(text) == [ToolCall(name="bash", arguments={"command": "ls"})]
    with pytest.raises(ToolCallFormatError, match="not valid JSON"):
        parse_hermes("<tool_call>{oops}</tool_call>")


def test_format_round_trips():
    calls = [ToolCall(name="str_replace", arguments={"path": "é.py", "old_str": "a\n\tb", "new_str": "</tool_calls>"}),
             ToolCall(name="submit", arguments={})]
    assert parse_minimax(format_minimax(calls)) == calls
    assert parse_hermes(format_hermes(calls)) == calls
