"""AST mutations are minimal text edits that keep the file's formatting and parse."""

from __future__ import annotations

import ast
import difflib

import pytest

from lightswe.tasks.mutate import KINDS, find_mutations, public_name

SOURCE = '''\
import itertools


def window(seq, n=2):
    """Docstring with a < b and 1 + 1 (never mutated)."""
    if n < 1:
        raise ValueError("n must be positive")  # keep  this   comment
    items = list(seq)
    total = 0
    for i in range(len(items) - n + 1):
        total += 1
    ok = bool(items) and not False
    return [tuple(items[i:i + n]) for i in range(total)] if ok else []


class Box:
    def __eq__(self, other):
        return isinstance(other, Box) or self.size == other.size

    def clip(self, x, lo, hi):
        return max(lo, min(x, hi))
'''


def changed_lines(old: str, new: str) -> list[str]:
    return [line for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def test_every_kind_is_found_and_each_edit_is_minimal_and_parses():
    mutations = find_mutations(SOURCE, "pkg/mod.py")
    assert {m.kind for m in mutations} == set(KINDS)
    for m in mutations:
        new = m.apply(SOURCE)
        ast.parse(new)
        diff = changed_lines(SOURCE, new)
        if m.kind == "drop_branch":  # whole lines removed, nothing else touched
            assert all(line.startswith("-") for line in diff) and len(diff) == 2, diff
        else:  # one line changed, the rest of it (comments, spacing) kept byte for byte
            assert len(diff) == 2, (m.describe(), diff)
            line_start = SOURCE.rfind("\n", 0, m.start) + 1
            assert diff[1][1:].startswith(SOURCE[line_start:m.start])  # text before the site kept


def test_docstrings_are_never_mutated():
    assert all(m.line != 5 for m in find_mutations(SOURCE, "pkg/mod.py"))


@pytest.mark.parametrize("kind,old,new", [
    ("flip_comparison", "if n < 1:", "if n <= 1:"),
    ("change_operator", "total += 1", "total -= 1"),
    ("swap_boolean", "bool(items) and not False", "bool(items) or not False"),
    ("off_by_one_slice", "items[i:i + n]", "items[i + 1:i + n]"),
    ("swap_arguments", "max(lo, min(x, hi))", "max(min(x, hi), lo)"),
    ("drop_return", "return isinstance(other, Box) or self.size == other.size", "return None"),
])
def test_examples(kind, old, new):
    found = [m.apply(SOURCE) for m in find_mutations(SOURCE, "pkg/mod.py") if m.kind == kind]
    expected = SOURCE.replace(old, new, 1)
    assert expected in found


def test_functions_filter_and_stale_source():
    only = find_mutations(SOURCE, "pkg/mod.py", functions={"Box.clip"})
    assert only and {m.function for m in only} == {"Box.clip"}
    with pytest.raises(ValueError, match="changed since"):
        only[0].apply(SOURCE.replace("def clip", "def clip2"))


def test_bad_source_is_a_clear_error():
    with pytest.raises(ValueError, match="not valid Python"):
        find_mutations("def f(:\n", "broken.py")


def test_unicode_columns_are_handled():
    source = 'def f(x):\n    s = "héllo wörld"; return s[1:] if x > 0 else s\n'
    for m in find_mutations(source, "u.py"):
        ast.parse(m.apply(source))
    assert any(m.apply(source).endswith("if x >= 0 else s\n") for m in find_mutations(source, "u.py"))


def test_public_name():
    assert public_name("Box.clip") == "clip"
    assert public_name("Box.__eq__") == "Box"
    assert public_name("window") == "window"
