"""Problem statements for synthesized bugs: the symptom in a user's words, never the fix.

What goes in: the call that misbehaves (the mutated function's public name, as the failing test uses it), the
failing test's own code around its failing line, and pytest's assertion message (expected vs actual). What
never goes in: the library's source lines (pytest's traceback shows the mutated line; those sections are cut),
the mutation kind, the file or line of the bug.
"""

from __future__ import annotations

import random
import re
import textwrap

_LOCATION = re.compile(r"^\S.*:\d+: \w*")  # "tests/test_x.py:12: AssertionError" ends a traceback entry


def test_excerpt(failure_text: str, test_file: str, max_lines: int = 14) -> str:
    """The failing test's code (its traceback entry), up to and including the ``>`` line; no library code."""
    lines = failure_text.splitlines()
    if lines and lines[0][:1] not in (" ", ">", "E", "") and not _LOCATION.match(lines[0]):
        lines[0] = "    " + lines[0]  # JUnit text is stripped: the first source line lost its 4-space margin
    entry: list[str] = []
    for line in lines:
        if _LOCATION.match(line):
            if line.startswith(test_file + ":") or line.split(":")[0].endswith(test_file):
                break  # the first entry is the test function itself
            entry = []  # an entry of another file (fixtures, library): skip it
            continue
        entry.append(line)
    code: list[str] = []
    for line in entry:
        if line.startswith("E "):
            break
        code.append(" " + line[1:] if line.startswith(">") else line)
    marked = [i for i, line in enumerate(entry) if line.startswith(">")]
    end = marked[0] + 1 if marked else len(code)
    code = code[max(0, end - max_lines):end]
    while code and not code[0].strip():
        code.pop(0)
    return textwrap.dedent("\n".join(code)).rstrip()


def error_lines(failure_text: str, message: str, max_lines: int = 12) -> str:
    """pytest's ``E`` lines of the last traceback entry (the assertion or exception), else the message."""
    found = [line[1:].strip() for line in failure_text.splitlines() if line.startswith("E ")]
    text = "\n".join(line for line in found if line) or message.strip()
    lines = text.splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["..."]
    return "\n".join(lines)


def _sides(line: str) -> tuple[str, str] | None:
    """``assert left == right`` (a failing test line) -> (left, right) source text, else None."""
    match = re.match(r"\s*assert (.+?) == (.+?)(?:,.*)?$", line)
    return (match.group(1), match.group(2)) if match else None


def expected_actual(error: str, failing_line: str, call: str) -> str:
    """"I expected X but got Y" when it is clear which side of the failing ``==`` calls ``call``, else ''.

    Tests write both ``assert f(x) == expected`` and ``assert expected == f(x)``: the side holding the call is
    the actual value. When the call is on neither or both sides, nothing is claimed.
    """
    lines = error.splitlines()
    values = None
    for line in lines[:3]:
        match = re.match(r"(?:AssertionError: )?assert (.+?) == (.+)$", line)
        if match and len(line) < 300:
            values = (match.group(1).strip(), match.group(2).strip())
            break
    if values:
        sides = _sides(failing_line)
        calls = re.compile(rf"\b{re.escape(call.split('.')[-1])}\s*\(")
        if sides and bool(calls.search(sides[0])) != bool(calls.search(sides[1])):
            actual, expected = values if calls.search(sides[0]) else values[::-1]
            return f"I expected `{expected}` but got `{actual}`."
        return ""
    first = lines[0] if lines else ""
    if first.startswith("AssertionError") or first.startswith("assert "):
        return ""
    if re.match(r"\w+(Error|Exception)\b", first):
        return f"Instead of a result, the call raises `{first[:200]}`."
    if "DID NOT RAISE" in first:
        return "I expected an exception here, but none is raised."
    return ""


def write_statement(*, package: str, call: str, failing: list[str], failure_text: str, message: str,
                    seed: int = 0) -> str:
    """The issue text for a bug whose tests ``failing`` fail; ``failure_text`` is the first one's traceback."""
    rng = random.Random(seed)
    first = failing[0]
    test_file = first.split("::")[0]
    excerpt = test_excerpt(failure_text, test_file)
    error = error_lines(failure_text, message)
    titles = [f"`{call}` gives a wrong result", f"Unexpected behaviour of `{call}` in {package}",
              f"{package}: `{call}` misbehaves", f"Bug in `{call}`"]
    parts = [rng.choice(titles), ""]
    others = len(failing) - 1
    also = f" (and {others} other test{'s' if others != 1 else ''})" if others else ""
    parts.append(f"In {package}, `{call}` does not behave as documented. The test `{first}`{also} fails.")
    if excerpt:
        parts += ["", "The failing test does:", "", "```python", excerpt, "```"]
    if error:
        parts += ["", "and fails with:", "", "```", error, "```"]
    expected = expected_actual(error, excerpt.splitlines()[-1] if excerpt else "", call)
    if expected:
        parts += ["", expected]
    if others:
        shown = ", ".join(f"`{t}`" for t in failing[1:4]) + (" ..." if others > 3 else "")
        parts += ["", f"Other failing tests: {shown}"]
    parts += ["", "Please fix the library so that these tests pass without breaking the others."]
    return "\n".join(parts)
