"""The tools against the real engine: byte-exact edits, line endings, hostile names, any argument value."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightswe.envs.sandbox import Sandbox, SandboxConfig
from lightswe.envs.swe_env import CHARSET
from lightswe.envs.tool_calls import ToolCall
from lightswe.envs.tools import ToolError, run_tool

pytestmark = pytest.mark.docker
ALLOWED = frozenset(CHARSET)


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(SandboxConfig(workdir="/testbed", labels={"lightswe.test": "tools"}))
    box.exec("chown agent:agent /testbed", user="root")
    yield box
    box.close()


@pytest.fixture
def box(sandbox):
    """The sandbox with an empty /testbed holding only a .git folder (as a task's repository has)."""
    sandbox.exec("find /testbed -mindepth 1 -delete; rm -rf /tmp/pwned; mkdir -p /testbed/.git/objects && "
                 "echo ref > /testbed/.git/HEAD && chown -R agent:agent /testbed", user="root")
    return sandbox


def tool(box: Sandbox, name: str, **arguments) -> str:
    output = run_tool(box, ToolCall(name=name, arguments=arguments)).output
    assert ALLOWED.issuperset(output), "the observation would lose characters to U+FFFD"
    return output


def refused(box: Sandbox, name: str, **arguments) -> str:
    with pytest.raises(ToolError) as info:
        run_tool(box, ToolCall(name=name, arguments=arguments))
    return str(info.value)


def files(box: Sandbox) -> str:
    return box.exec("cd /testbed && find . | LC_ALL=C sort", user="root").output


# ------------------------------------------------------------------------------ kind 1: bytes are kept
FILES = {
    "latin1": b"x = 1\n# caf\xe9\n",
    "cp1252-quotes": b"x = 1\n# \x93quoted\x94 \x85\n",
    "utf8-bom": b"\xef\xbb\xbfx = 1\nname = 'na\xc3\xafve'\n",
    "nul-bytes": b"x = 1\nblob = '\x00\x01\x02'\n",
    "no-final-newline": b"y = 0\nx = 1",
    "long-line": b"x = 1\n" + b"#" * 200_000 + b"\xff\n",
    "mixed-endings": b"a = 0\r\nx = 1\nb = 2\r\n",
    "cesu-surrogate": b"x = 1\ns = '\xed\xa0\x80'\n",
    "cut-multibyte": b"x = 1\ns = '\xe2\x82'\n",
    "emoji": b"x = 1\nok = '\xf0\x9f\x98\x80'\n",
}


@pytest.mark.parametrize("data", FILES.values(), ids=FILES.keys())
def test_str_replace_changes_only_the_replaced_bytes(box, data):
    box.write_file("/testbed/f.py", data)
    shown = tool(box, "view", path="f.py")
    assert "\ufffd" not in shown
    assert "Edited f.py" in tool(box, "str_replace", path="f.py", old_str="x = 1", new_str="x = 2")
    assert box.read_file("/testbed/f.py") == data.replace(b"x = 1", b"x = 2", 1)


def test_non_utf8_bytes_are_shown_as_escapes_and_edited_through_them(box):
    box.write_file("/testbed/l.py", b"x = 1\n# caf\xe9\n")
    shown = tool(box, "view", path="l.py")
    assert "not valid UTF-8" in shown and "     2\t# caf\\xe9" in shown
    tool(box, "str_replace", path="l.py", old_str="# caf\\xe9", new_str="# caf\\xe9 cr\\xe8me")
    assert box.read_file("/testbed/l.py") == b"x = 1\n# caf\xe9 cr\xe8me\n"
    tool(box, "str_replace", path="l.py", old_str="x = 1", new_str="x = 'é'")  # new text is written as UTF-8
    assert box.read_file("/testbed/l.py") == b"x = '\xc3\xa9'\n# caf\xe9 cr\xe8me\n"


@pytest.mark.parametrize("content", ["", "no newline", "a\x00b\n", "crlf\r\nkept\r\n", "é ✓ 😀\n", "\ufeffbom\n",
                                     "x" * 100_000], ids=["empty", "no-newline", "nul", "crlf", "unicode", "bom",
                                                          "long"])
def test_create_writes_exactly_the_content(box, content):
    out = tool(box, "create", path="new/deep/file.txt", content=content)
    assert f"({len(content.encode())} bytes" in out
    assert box.read_file("/testbed/new/deep/file.txt") == content.encode()
    assert box.exec("stat -c %U /testbed/new/deep/file.txt", user="root").output.strip() == "agent"


# -------------------------------------------------------------------------------- kind 2: line endings
def test_crlf_is_visible_and_edits_keep_it(box):
    box.write_file("/testbed/w.py", b"def f():\r\n    return 1\r\n")
    shown = tool(box, "view", path="w.py")
    assert "Windows line endings" in shown and "\\r" in shown and shown.endswith("     2\t    return 1")
    tool(box, "str_replace", path="w.py", old_str="def f():\n    return 1\n", new_str="def f():\n    x = 2\n    return x\n")
    assert box.read_file("/testbed/w.py") == b"def f():\r\n    x = 2\r\n    return x\r\n"


def test_mixed_endings_are_listed_and_each_edit_keeps_its_lines_style(box):
    box.write_file("/testbed/m.txt", b"one\r\ntwo\nthree\r\n")
    assert "lines 1, 3" in tool(box, "view", path="m.txt")
    tool(box, "str_replace", path="m.txt", old_str="two", new_str="two\n2")
    tool(box, "str_replace", path="m.txt", old_str="three", new_str="three\n3")
    assert box.read_file("/testbed/m.txt") == b"one\r\ntwo\n2\nthree\r\n3\r\n"


def test_lone_carriage_return_is_shown_as_an_escape(box):
    box.write_file("/testbed/p.log", b"10%\r50%\r100%\n")
    assert "     1\t10%\\r50%\\r100%" in tool(box, "view", path="p.log")


# ----------------------------------------------------------------------- kind 3: agent strings are data
NAMES = ["-delete", "-n", "--help", "-rf", "a b", "it's", 'q"uote', "$(touch /tmp/pwned)", "`touch /tmp/pwned`",
         "*", "x\ny", "!", "(", ";touch /tmp/pwned"]


def test_a_directory_named_like_a_find_action_is_listed_not_run(box):
    box.exec("mkdir -p /testbed/-delete/sub && touch /testbed/-delete/sub/keep /testbed/keep.py", user="agent")
    before = files(box)
    out = tool(box, "view", path="-delete")
    assert "sub/" in out and "sub/keep" in out
    assert files(box) == before and ".git/HEAD" in before


@pytest.mark.parametrize("name", NAMES)
def test_hostile_names_are_operands(box, name):
    tool(box, "create", path=name, content="needle = 1\n")
    assert box.read_file(f"/testbed/{name}") == b"needle = 1\n"
    assert "needle = 1" in tool(box, "view", path=name)
    tool(box, "str_replace", path=name, old_str="needle = 1", new_str="needle = 2")
    assert box.read_file(f"/testbed/{name}") == b"needle = 2\n"
    assert "needle = 2" in tool(box, "search", pattern="needle", path=name)
    assert "needle = 2" in tool(box, "search", pattern="needle")
    assert tool(box, "view", path=".").count("\n") >= 1
    assert box.exec("test -e /tmp/pwned", user="root").exit_code != 0


@pytest.mark.parametrize("pattern", ["-e", "--include=x", "-rf", "$(touch /tmp/pwned)", "`touch /tmp/pwned`", "*",
                                     "--", "-f/etc/passwd"])
def test_hostile_patterns_are_patterns(box, pattern):
    box.write_file("/testbed/p.txt", f"line with {pattern} in it\n".encode())
    out = tool(box, "search", pattern=pattern.replace("*", "\\*") if pattern == "*" else pattern)
    assert "p.txt:1:line with" in out and "root:" not in out
    assert box.exec("test -e /tmp/pwned", user="root").exit_code != 0


def test_globs_are_not_expanded(box):
    box.write_file("/testbed/a.py", b"a\n")
    assert "does not exist" in refused(box, "view", path="*.py")


# ---------------------------------------------------------------- kind 4: any JSON value -> an observation
BAD = [
    ("create", {"path": "s.py", "content": "x = '\ud800'"}, "lone surrogate"),
    ("str_replace", {"path": "f.py", "old_str": "x", "new_str": "\udcff"}, "lone surrogate"),
    ("bash", {"command": "echo \ud83d"}, "lone surrogate"),
    ("bash", {"command": "ls", "timeout": float("nan")}, "got number NaN"),
    ("bash", {"command": "ls", "timeout": float("inf")}, "got number Infinity"),
    ("bash", {"command": "ls", "timeout": -1}, "> 0"),
    ("bash", {"command": "ls", "timeout": 0}, "> 0"),
    ("bash", {"command": "ls", "timeout": True}, "got boolean true"),
    ("bash", {"command": "ls", "timeout": "soon"}, "got string 'soon'"),
    ("bash", {"command": "ls", "timeout": [5]}, "got an array"),
    ("bash", {"command": "echo a\x00b"}, "NUL character"),
    ("bash", {"command": ["ls"]}, "must be a string, got an array"),
    ("bash", {"command": None}, "'command' is null"),
    ("bash", {}, "'command' is missing"),
    ("view", {"path": None}, "'path' is null"),
    ("view", {"path": 3}, "must be a string, got number 3"),
    ("view", {"path": {"p": "a"}}, "got an object"),
    ("view", {"path": ""}, "is empty"),
    ("view", {"path": "a\x00b"}, "NUL character"),
    ("view", {"path": "f.py", "start_line": float("nan")}, "whole number of lines, got number NaN"),
    ("view", {"path": "f.py", "start_line": True}, "got boolean true"),
    ("view", {"path": "f.py", "start_line": 2.5}, "got number 2.5"),
    ("view", {"path": "f.py", "start_line": -3}, "start_line must be >= 1"),
    ("view", {"path": "f.py", "start_line": 10**30}, "outside f.py"),
    ("view", {"path": "f.py", "end_line": -7}, "-1 for the end"),
    ("search", {"pattern": "a\nb"}, "line break"),
    ("search", {"pattern": ""}, "pattern is empty"),
    ("view", {"path": "f.py", "extra": 1}, "unexpected argument"),
    ("nope", {}, "unknown tool 'nope'"),
]


@pytest.mark.parametrize("name, arguments, expected", BAD, ids=[f"{n}-{e[:18]}" for n, _, e in BAD])
def test_bad_values_are_refused_with_the_reason(box, name, arguments, expected):
    box.write_file("/testbed/f.py", b"x = 1\n")
    message = refused(box, name, **arguments)
    assert expected in message and "runner" not in message
    assert box.read_file("/testbed/f.py") == b"x = 1\n"


@pytest.mark.parametrize("arguments, expected", [
    ({"start_line": "2", "end_line": 2.0}, "     2\tb"), ({"start_line": None, "end_line": None}, "     1\ta"),
    ({"start_line": 2, "end_line": 10**30}, "     3\tc"), ({"start_line": 3, "end_line": -1}, "     3\tc"),
], ids=["string-and-float", "nulls", "huge-end", "minus-one-end"])
def test_numbers_in_other_spellings_are_accepted(box, arguments, expected):
    box.write_file("/testbed/f.py", b"a\nb\nc\n")
    assert expected in tool(box, "view", path="f.py", **arguments)


def test_the_sandbox_refuses_a_nan_timeout_instead_of_reporting_a_runner_death(box):
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="finite number of seconds"):
            box.exec("true", timeout=bad)
    assert box.exec("echo alive", timeout=5).output == "alive\n"


def test_huge_timeouts_are_capped_with_a_note(box):
    assert tool(box, "bash", command="echo ok", timeout=1e308).startswith("[timeout capped at 600 s]\nok")
    assert tool(box, "bash", command="echo ok", timeout=10**400).startswith("[timeout capped at 600 s]")
    assert tool(box, "bash", command="echo ok", timeout="2.5") == "ok\n[exit code 0]"


# ------------------------------------------------------------------------------- kind 6: edge cases
def test_view_of_empty_file_and_directory(box):
    box.write_file("/testbed/empty.py", b"")
    assert tool(box, "view", path="empty.py") == "[empty.py is empty (0 bytes)]"
    box.exec("mkdir /testbed/void", user="agent")
    assert tool(box, "view", path="void") == "[void is an empty directory]"


def test_view_lists_dot_files_and_hides_only_git(box):
    box.exec("mkdir -p .github/workflows src/__pycache__ && touch .gitignore .gitattributes .pre-commit-config.yaml "
             ".github/workflows/ci.yml src/.env src/__pycache__/m.pyc src/m.py", user="agent")
    listing = tool(box, "view", path=".").splitlines()
    assert {".github/", ".github/workflows/", ".gitignore", ".gitattributes", ".pre-commit-config.yaml", "src/",
            "src/.env", "src/m.py"} <= set(listing)
    assert not [line for line in listing if line.startswith(".git/") or line == ".git/" or "__pycache__" in line[1:]
                and not line.startswith("[")]


def test_submit_takes_null_arguments_through_the_parser(box):
    from lightswe.envs.tool_calls import parse_minimax

    call, = parse_minimax('<tool_calls>\n{"name": "submit", "arguments": null}\n</tool_calls>')
    assert run_tool(box, call).submitted


def test_str_replace_reports_not_found_and_ambiguity(box):
    box.write_file("/testbed/f.py", b"a = 1\na = 1\n")
    assert "occurs 2 times in f.py (lines 1, 2)" in refused(box, "str_replace", path="f.py", old_str="a = 1", new_str="b")
    assert "was not found" in refused(box, "str_replace", path="f.py", old_str="zz", new_str="b")
    assert "is a directory" in refused(box, "str_replace", path=".", old_str="a", new_str="b")
    assert json.loads(json.dumps(refused(box, "create", path="f.py", content="x")))  # "already exists"


# ------------------------------------------------------------------- nothing half-written, nothing lost
def test_edits_keep_mode_and_symlinks_and_leave_no_temporary(box):
    box.write_file("/testbed/run.sh", b"#!/bin/sh\necho 1\n", mode=0o750)
    box.exec("ln -s run.sh /testbed/link.sh", user="agent")
    tool(box, "str_replace", path="link.sh", old_str="echo 1", new_str="echo 2")
    assert box.read_file("/testbed/run.sh") == b"#!/bin/sh\necho 2\n"
    listing = box.exec("stat -c '%n %a %F' /testbed/run.sh /testbed/link.sh; ls -a /testbed", user="root").output
    assert "/testbed/run.sh 750 regular file" in listing and "/testbed/link.sh 777 symbolic link" in listing
    assert "lightswe-" not in listing
    tool(box, "create", path="made.py", content="x\n")
    assert box.exec("stat -c %a /testbed/made.py", user="root").output.strip() == "644"


def test_a_full_disk_leaves_the_file_whole():
    from lightswe.envs import disk

    box = Sandbox(SandboxConfig(workdir="/testbed", disk_limit="64m", labels={"lightswe.test": "tools-disk"}))
    try:
        if not box._disk_path:
            pytest.skip(f"no hard disk limit on this engine ({disk.disk_mode(box.client)})")
        box.exec("chown agent:agent /testbed", user="root")
        data = b"x = 1\n" + b"#" * 1_500_000 + b"\n"
        box.write_file("/testbed/big.py", data)
        box.exec("head -c 100000000 /dev/zero > /testbed/fill", timeout=60)  # stopped by the disk limit
        message = refused(box, "str_replace", path="big.py", old_str="x = 1", new_str="x = 2")
        assert "disk is full" in message and "left as it was" in message
        assert box.read_file("/testbed/big.py") == data
        assert "lightswe-" not in box.exec("ls -a /testbed", user="root").output
        assert "disk is full" in refused(box, "create", path="new.py", content="y" * 1_000_000)
        assert box.exec("test -e /testbed/new.py", user="root").exit_code != 0
    finally:
        box.close()


# ----------------------------------------------------------------- any bytes, any name (property-based)

_CHUNK = st.one_of(st.binary(max_size=30), st.sampled_from([b"\r\n", b"\n", b"\r", b"\xef\xbb\xbf", b"\x00", b"\xe9",
                                                            b"\\xe9", b"-delete", b"$(id)"]))
_OTHER = st.lists(_CHUNK, max_size=5).map(b"".join).filter(lambda b: b"x = " not in b)
_NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=40) \
    .filter(lambda n: n not in (".", "..") and len(n.encode()) < 200)
_SLOW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SLOW
@given(before=_OTHER, after=_OTHER)
def test_any_file_bytes_survive_an_edit_in_the_engine(sandbox, before, after):
    sandbox.write_file("/testbed/any.bin", before + b"x = 1" + after)
    tool(sandbox, "str_replace", path="any.bin", old_str="x = 1", new_str="x = 2")
    assert sandbox.read_file("/testbed/any.bin") == before + b"x = 2" + after


@_SLOW
@given(name=_NAME, content=st.text(st.characters(blacklist_categories=("Cs",)), max_size=50))
def test_any_name_is_an_operand_in_the_engine(sandbox, name, content):
    sandbox.exec("rm -rf /testbed/named && mkdir /testbed/named", user="agent")
    path = f"named/{name}"
    tool(sandbox, "create", path=path, content=content)
    stored = sandbox.exec('base64 -w0 -- "$F"', env={"F": f"/testbed/{path}"}, timeout=10)  # the engine's archive
    assert base64.b64decode(stored.output) == content.encode()  # API cannot name a file ending in a newline
    tool(sandbox, "str_replace", path=path, old_str=content, new_str=content + "!") if content else None
    assert tool(sandbox, "view", path="named").splitlines()[1:] != []
    count = sandbox.exec("find /testbed/named -mindepth 1 -printf x", user="agent").output
    assert count == "x"  # one file, no temporary left beside it
