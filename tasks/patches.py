"""Unified diffs as text: reverse one (a SWE-smith bug becomes its fix) without a repository.

Format: ``git diff`` output (``diff --git`` headers, ``---``/``+++`` names, ``@@ -a,b +c,d @@`` hunks, ``new file
mode``/``deleted file mode``, renames). Reversal swaps the two sides of every header and hunk and the ``-``/``+``
lines; context lines and ``\\ No newline at end of file`` markers follow the line they annotate. Binary patches
(``GIT binary patch``) cannot be reversed as text: :class:`PatchError` says so.
"""

from __future__ import annotations

import re

from lightswe.errors import UserInputError

_HUNK = re.compile(r"^@@ -(\d+(?:,\d+)?) \+(\d+(?:,\d+)?) @@(.*)$")
_SWAP = {"new file mode": "deleted file mode", "deleted file mode": "new file mode", "rename from": "rename to",
         "rename to": "rename from", "copy from": "copy to", "copy to": "copy from"}


class PatchError(UserInputError):
    """A patch that cannot be handled as text (binary, malformed); names the file and the fix."""


def reverse_patch(patch: str) -> str:
    """The patch that undoes ``patch`` (``git apply -R`` as text); raises PatchError for binary patches."""
    out: list[str] = []
    lines = patch.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("GIT binary patch"):
            raise PatchError("a binary patch cannot be reversed as text; fix: give the fix patch in the row")
        if line.startswith("diff --git "):
            match = re.match(r"^diff --git (\S+) (\S+)(\r?\n?)$", line)
            out.append(f"diff --git {match.group(2)} {match.group(1)}{match.group(3)}" if match else line)
            i += 1
            continue
        if line.startswith("index "):
            match = re.match(r"^index ([0-9a-f]+)\.\.([0-9a-f]+)(.*)$", line, re.S)
            out.append(f"index {match.group(2)}..{match.group(1)}{match.group(3)}" if match else line)
            i += 1
            continue
        if line.startswith("old mode ") or line.startswith("new mode "):
            out.append(("new mode " if line.startswith("old") else "old mode ") + line[len("old mode "):])
            i += 1
            continue
        swapped = next((k for k in _SWAP if line.startswith(k + " ") or line.rstrip("\r\n") == k), None)
        if swapped:
            out.append(_SWAP[swapped] + line[len(swapped):])
            i += 1
            continue
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = line[4:], lines[i + 1][4:]
            out += [f"--- {new}", f"+++ {old}"]
            i += 2
            continue
        match = _HUNK.match(line.rstrip("\r\n"))
        if match:
            out.append(f"@@ -{match.group(2)} +{match.group(1)} @@{match.group(3)}" + line[len(line.rstrip("\r\n")):])
            i += 1
            old_left, new_left = (_count(match.group(n)) for n in (1, 2))
            removed: list[str] = []
            added: list[str] = []
            target = out
            while i < len(lines) and (old_left > 0 or new_left > 0 or lines[i].startswith("\\")):
                current = lines[i]
                kind = current[:1]
                if kind == "\\":  # "\ No newline at end of file" follows the line it annotates
                    target.append(current)
                elif kind == "-":
                    removed.append("+" + current[1:])
                    target, old_left = removed, old_left - 1
                elif kind == "+":
                    added.append("-" + current[1:])
                    target, new_left = added, new_left - 1
                else:  # context (a blank line is an empty context line)
                    out += added + removed
                    added, removed = [], []
                    out.append(current)
                    target, old_left, new_left = out, old_left - 1, new_left - 1
                i += 1
            out += added + removed
            continue
        out.append(line)
        i += 1
    return "".join(out)


def _count(span: str) -> int:
    """Line count of a hunk range ``start,count`` (``start`` alone means one line)."""
    return int(span.split(",")[1]) if "," in span else 1


def changed_files(patch: str) -> list[str]:
    """Paths a git-style patch touches (the new name of a rename; the old name of a deletion)."""
    files: list[str] = []
    for match in re.finditer(r"^diff --git a/(\S+) b/(\S+)$", patch, re.M):
        if match.group(2) not in files:
            files.append(match.group(2))
    return files
