"""Tool-call parsers: MiniMax-M1 ``<tool_calls>`` blocks and Hermes ``<tool_call>`` tags (pure, no Docker)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightswe.envs.tool_calls import (
    FORMATTERS,
    PARSERS,
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


# ------------------------------------------------------------------------------------ any text round-trips

TAGS = ["<tool_call>", "</tool_call>", "<tool_calls>", "</tool_calls>", "<think>", "</think>", "<|im_end|>",
        "\n", "\r\n", "{", "}", '"', "\\", "\\u", "\ud800", "\x00", "\u2028"]
# arbitrary text, with the tags and JSON's own structure characters mixed in far more often than by chance
TEXT = st.lists(st.one_of(st.text(), st.sampled_from(TAGS)), max_size=8).map("".join)
VALUE = st.recursive(st.none() | st.booleans() | st.integers() | TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                     max_leaves=8)
CALLS = st.lists(st.builds(ToolCall, name=TEXT, arguments=st.dictionaries(TEXT, VALUE, max_size=4)),
                 min_size=1, max_size=3)


@pytest.mark.parametrize("fmt", ["minimax", "hermes"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=CALLS, reasoning=TEXT)
def test_any_argument_text_round_trips(fmt, calls, reasoning):
    text = FORMATTERS[fmt](calls)
    assert PARSERS[fmt](text) == calls
    # a reasoning block before the calls is skipped whole, whatever it holds (but its own closing tag)
    reasoning = reasoning.replace("</think>", "")
    assert PARSERS[fmt](f"<think>{reasoning}</think>\n{text}") == calls


@pytest.mark.parametrize("fmt", ["minimax", "hermes"])
@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_any_text_parses_or_says_why(fmt, text):
    """No model text makes a parser raise anything but ToolCallFormatError (whose message is the observation)."""
    try:
        calls = PARSERS[fmt](text)
    except ToolCallFormatError as err:
        assert str(err)
    else:
        assert all(isinstance(c, ToolCall) and isinstance(c.arguments, dict) for c in calls)


@pytest.mark.parametrize("argument", [
    "</tool_call>", "</tool_calls>", "<think>x</think>", "</think>", "<think>", "a\n</tool_calls>\n<tool_calls>\nb",
    '{"name": "submit"}', "<tool_call>{\"name\": \"submit\"}</tool_call>",
], ids=["hermes-close", "minimax-close", "think-block", "think-close", "think-open", "block-in-text",
        "json-in-text", "call-in-text"])
@pytest.mark.parametrize("fmt", ["minimax", "hermes"])
def test_tags_inside_arguments_are_data(fmt, argument):
    calls = [ToolCall(name="create", arguments={"path": "chat_template.jinja", "content": argument})]
    assert PARSERS[fmt](FORMATTERS[fmt](calls)) == calls


@pytest.mark.parametrize("fmt", ["minimax", "hermes"])
def test_think_handling_never_touches_arguments(fmt):
    """A call whose argument holds a think block, written as a model writes it (no escaping)."""
    body = '{"name": "bash", "arguments": {"command": "echo \'<think>secret</think>\' > t.txt"}}'
    text = ("<think>plan: <tool_calls>{no}</tool_calls></think>\n<tool_calls>\n" + body + "\n</tool_calls>"
            if fmt == "minimax" else "<think>plan</think><tool_call>" + body + "</tool_call>")
    assert PARSERS[fmt](text)[0].arguments["command"] == "echo '<think>secret</think>' > t.txt"


@pytest.mark.parametrize("arguments", ["null", "{}", '""', '"{}"', '"null"'], ids=["null", "object", "empty-string",
                                                                               "string-object", "string-null"])
@pytest.mark.parametrize("fmt", ["minimax", "hermes"])
def test_no_arguments_in_every_spelling(fmt, arguments):
    body = '{"name": "submit", "arguments": ' + arguments + "}"
    text = f"<tool_calls>\n{body}\n</tool_calls>" if fmt == "minimax" else f"<tool_call>{body}</tool_call>"
    assert PARSERS[fmt](text) == [ToolCall(name="submit")]
    assert PARSERS[fmt](text.replace(', "arguments": ' + arguments, "")) == [ToolCall(name="submit")]


@pytest.mark.parametrize("body, expected", [
    ('{"name": "bash", "arguments": {"command": ' + "[" * 100_000 + "]" * 100_000 + "}}", "nested too deeply"),
    ('{"name": "bash", "arguments": {"timeout": ' + "9" * 5000 + "}}", "cannot read"),
    ('{"name": 7, "arguments": {}}', 'string "name"'),
    ('{"name": "bash", "arguments": 3}', "must be a JSON object"),
    ('{"name": "bash", "arguments": "[1, 2]"}', "must be a JSON object"),
], ids=["deep-nesting", "huge-integer", "number-name", "number-arguments", "string-array-arguments"])
@pytest.mark.parametrize("fmt", ["minimax", "hermes"])
def test_values_python_chokes_on_are_format_errors(fmt, body, expected):
    text = f"<tool_calls>\n{body}\n</tool_calls>" if fmt == "minimax" else f"<tool_call>{body}</tool_call>"
    with pytest.raises(ToolCallFormatError, match=expected):
        PARSERS[fmt](text)


def test_hermes_cut_at_the_stop_string_and_junk_after_the_object():
    assert parse_hermes('<tool_call>{"name": "submit"}') == [ToolCall(name="submit")]
    with pytest.raises(ToolCallFormatError, match="expected </tool_call>"):
        parse_hermes('<tool_call>{"name": "submit"} and more</tool_call>')
    with pytest.raises(ToolCallFormatError, match="not closed"):
        parse_hermes("<tool_call>  ")
