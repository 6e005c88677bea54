"""The tools' text layer without Docker: byte-exact replacement, line endings, escapes (property-based)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lightswe.envs.swe_env import CHARSET
from lightswe.envs.tools import ToolError, render, replace_once, show, unescape

ALLOWED = frozenset(CHARSET)
MARK = "x = 1"
# bytes that are anything but the marker: raw bytes, CR/LF, BOM, NUL, non-UTF-8
CHUNK = st.one_of(st.binary(max_size=20), st.sampled_from([b"\r\n", b"\n", b"\r", b"\xef\xbb\xbf", b"\x00", b"\xe9",
                                                           b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"\\xe9"]))
OTHER = st.lists(CHUNK, max_size=6).map(b"".join).filter(lambda b: b"x = 1" not in b and b"x = " not in b)


@settings(max_examples=200, deadline=None)
@given(before=OTHER, after=OTHER, new=st.text().filter(lambda t: "\r" not in t and not any(0xD800 <= ord(c) <= 0xDFFF for c in t)))
def test_bytes_outside_the_match_are_kept_exactly(before, after, new):
    edit = replace_once(before + MARK.encode() + after, MARK, new)
    assert edit.data.startswith(before) and edit.data.endswith(after)
    middle = edit.data[len(before):len(edit.data) - len(after)]
    assert middle == new.replace("\n", edit.line_ending).encode()


@settings(max_examples=200, deadline=None)
@given(data=st.lists(CHUNK, max_size=12).map(b"".join))
def test_view_of_any_bytes_stays_in_the_observation_space(data):
    shown = render(data, "f", start=1, end=-1, budget=10**9) if data else render(data, "f")
    assert ALLOWED.issuperset(shown)
    assert "\ufffd" not in shown or "\ufffd".encode() in data  # U+FFFD only where the file has it


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=60))
def test_show_and_unescape_are_inverse(data):
    text = data.replace(b"\\", b"/").decode("utf-8", "surrogateescape")
    assert unescape(show(text)) == text
    assert unescape(show(text)).encode("utf-8", "surrogateescape") == data.replace(b"\\", b"/")


@pytest.mark.parametrize("data, old, new, expected", [
    (b"def f():\r\n    return 1\r\n", "def f():\n    return 1\n", "def f():\n    return 2\n",
     b"def f():\r\n    return 2\r\n"),
    (b"a\nb\n", "a\r\nb", "A\r\nB", b"A\nB\n"),
    (b"a\r\nb\nc\r\n", "b", "B\nB2", b"a\r\nB\nB2\nc\r\n"),
    (b"a\r\nb\nc\r\n", "c", "C\nC2", b"a\r\nb\nC\r\nC2\r\n"),
    (b"a\r\nlast", "last", "L1\nL2", b"a\r\nL1\r\nL2"),
    (b"x = 1\n# caf\xe9\n", "# caf\\xe9", "# caf\\xe9!", b"x = 1\n# caf\xe9!\n"),
    (b"a\x00b\n", "a\\x00b", "ab", b"ab\n"),
    (b"\xef\xbb\xbfimport os\n", "\\ufeffimport os", "import sys", b"import sys\n"),
    (b"p\rq\n", "p\\rq", "pq", b"pq\n"),
    (b"p\rq\nz\n", "p\\rq", "x\ny", b"x\ny\nz\n"),
    (b"a\rb\rc\r", "b\nc", "B\nC2", b"a\rB\rC2\r"),
    (b"a\rb\rc", "c", "C\nD", b"a\rb\rC\rD"),
], ids=["crlf-multiline", "crlf-old-on-lf-file", "mixed-lf-part", "mixed-crlf-part", "crlf-last-line-no-newline",
        "latin1-escape", "nul-escape", "bom-escape", "lone-cr-escape", "lone-cr-is-data-in-lf-file",
        "classic-mac-multiline", "classic-mac-last-line"])
def test_line_endings_and_escapes(data, old, new, expected):
    assert replace_once(data, old, new).data == expected


@pytest.mark.parametrize("data, old, expected", [
    (b"a\na\n", "a", "occurs 2 times in f (lines 1, 2)"),
    (b"abc\n", "abd", "not found"),
    (b"caf\xe9\n", "cafe", "\\xNN"),
    (b"abc\n", "", "empty"),
], ids=["twice", "absent", "absent-non-utf8-hint", "empty"])
def test_refusals_say_why(data, old, expected):
    with pytest.raises(ToolError, match=expected.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")):
        replace_once(data, old, "z", "f")


def test_view_notes_say_what_is_hidden():
    assert render(b"", "e.py") == "[e.py is empty (0 bytes)]"
    crlf = render(b"a\r\nb\r\n", "w.py")
    assert "Windows line endings" in crlf and "\r" not in crlf and crlf.endswith("     2\tb")
    mixed = render(b"a\r\nb\nc\r\n", "m.py")
    assert "2 of 3 lines end with \\r\\n (lines 1, 3" in mixed
    assert render(b"a\nb", "n.py").endswith("[no newline at end of file]")
    mac = render(b"one\rtwo\r", "mac.txt")
    assert "bare \\r (classic Mac OS)" in mac and mac.endswith("     1\tone\n     2\ttwo")
    latin = render(b"x = 1\n# caf\xe9\n", "l.py")
    assert "not valid UTF-8" in latin and "# caf\\xe9" in latin
    long = render(b"#" * 5000 + b"\n", "long.py")
    assert "line cut: 3000 more characters" in long and len(long) < 3000
    many = render(b"".join(b"line %d\n" % i for i in range(1000)), "many.py", 1, -1, budget=500)
    assert "view start_line=" in many and len(many) < 1000
    with pytest.raises(ToolError, match="outside e.py, which has 1 lines"):
        render(b"x\n", "e.py", 5, 6)
