"""Test ids as datasets publish them, matched to what a test run reports. Pure: no sandbox, no I/O.

Published FAIL_TO_PASS/PASS_TO_PASS ids are not always ids a runner can address:

- **cut short at a space**: SWE-bench's log parser took ``line.split()[1]`` of pytest's ``-rA`` summary, so the
  parametrization ``test_y[a b-1]`` is published as ``tests/test_x.py::test_y[a``;
- **foreign paths**: the file part or a parameter holds a path of the machine that built the dataset
  (``/home/ci/work/proj/tests/test_x.py::test_y``, ``test_read[/tmp/pytest-of-ci/pytest-3/data0/a.txt]``);
- **unittest/Django style** ``test_x (module.Class)``, printed as ``test_x (module.Class.test_x)`` by
  Python >= 3.11; **sympy style**: a bare function name ``test_x``.

What is run (:func:`pytest_targets`): ids pytest can address go as they are; for any other id its test *file*
is run, as SWE-bench's harness runs the files of the test patch, so one bad id cannot make pytest exit 4
before running anything. How results are matched (:func:`match`), in order: exact id; the same id with paths
reduced to their last component and the file part resolved inside the repository; a published id cut short
at a space stands for every reported test whose id, cut at its first space, is that id (all must pass);
unittest ids with and without the trailing method name. An id that matches nothing is ``"missing"``: it
counts against itself only (it is not passing) and :attr:`Match.unmatched` says why.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

MISSING = "missing"
_ABS_DIRS = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?/(?:[^/\s\[\]\"',()]+/)+")  # directory part of an absolute path
_UNITTEST = re.compile(r"^(\w+) \(([\w.]+)\)(.*)$", re.S)
_RANK = {"passed": 0, "skipped": 1, "xfail": 1, "failed": 2, "error": 3, MISSING: 4}


@dataclass(kw_only=True, slots=True)
class Match:
    tests: dict[str, str] = field(default_factory=dict)  # published id -> passed/failed/error/skipped/missing
    unmatched: dict[str, str] = field(default_factory=dict)  # published id -> why no reported test matched it
    resolved: dict[str, list[str]] = field(default_factory=dict)  # published id -> reported ids (when not equal)


def resolve_file(path: str, files: Collection[str] | None) -> str | None:
    """The repository file that ``path`` names: itself, or the longest suffix of it that is a file.

    ``/home/ci/proj/tests/test_x.py`` -> ``tests/test_x.py`` when that is in ``files``; None when nothing is.
    Without ``files`` a relative path is taken as it is.
    """
    path = path.strip()
    if files is None:
        return None if path.startswith("/") else path
    if path in files:
        return path
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for cut in range(len(parts)):
        candidate = "/".join(parts[cut:])
        if candidate in files:
            return candidate
    return None


def addressable(test_id: str, files: Collection[str] | None) -> bool:
    """Whether pytest can select ``test_id`` as it is (its file exists, brackets close, no foreign path)."""
    if "::" not in test_id:
        return False
    file = test_id.split("::", 1)[0]
    return (resolve_file(file, files) == file and test_id.count("[") == test_id.count("]")
            and not _ABS_DIRS.search(test_id.split("::", 1)[1]) and test_id == test_id.strip())


def pytest_targets(ids: list[str], files: Collection[str] | None) -> tuple[list[str], dict[str, str]]:
    """(arguments for pytest, {id: reason} for ids whose file is not in the repository).

    Addressable ids are passed as they are; for the others their resolved file is passed (and then no other
    id of that file, which the file run covers).
    """
    whole: list[str] = []
    unresolved: dict[str, str] = {}
    for test in ids:
        if addressable(test, files):
            continue
        file = resolve_file(test.split("::", 1)[0], files)
        if file is None:
            unresolved[test] = f"its file {test.split('::', 1)[0]!r} is not in the repository"
        elif file not in whole:
            whole.append(file)
    targets = list(whole)
    for test in ids:
        if test not in unresolved and addressable(test, files) and test.split("::", 1)[0] not in whole \
                and test not in targets:
            targets.append(test)
    return targets, unresolved


def files_of(ids: list[str], files: Collection[str] | None) -> list[str]:
    """The resolved test files of ``ids`` (what to run when ids cannot be selected one by one)."""
    out: list[str] = []
    for test in ids:
        file = resolve_file(test.split("::", 1)[0], files)
        if file is not None and file not in out:
            out.append(file)
    return out


def ascii_escaped(text: str) -> str:
    """``text`` with each non-ASCII character written as pytest writes it in a test id (``é`` -> ``\\xe9``,
    ``_pytest.compat.ascii_escaped``); ASCII, escapes already written included, is left as it is."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() else c.encode("unicode_escape").decode("ascii") for c in text)


def canonical(test_id: str, files: Collection[str] | None = None) -> str:
    """``test_id`` with its file resolved in the repository, absolute paths cut to their last part and, in a
    pytest id, non-ASCII characters escaped as pytest reports them (a dataset may publish ``test_p[é]`` for
    pytest's ``test_p[\\xe9]``)."""
    test_id = test_id.strip()
    if "::" in test_id:
        file, rest = test_id.split("::", 1)
        file = resolve_file(file, files) or file
        return f"{file}::{ascii_escaped(_ABS_DIRS.sub('', rest))}"
    match = _UNITTEST.match(test_id)
    if match:
        name, dotted, tail = match.groups()
        return f"{name} ({dotted.removesuffix('.' + name)}){tail}"
    return _ABS_DIRS.sub("", test_id)


def _combined(outcomes: list[str]) -> str:
    return max(outcomes, key=lambda o: _RANK.get(o, 2))


def match(ids: list[str], reported: Mapping[str, str], files: Collection[str] | None = None,
          unresolved: Mapping[str, str] | None = None) -> Match:
    """Outcome of each published id in ``reported`` (test id -> outcome, lower-case), see the module doc.

    ``unresolved``: reasons already known (from :func:`pytest_targets`) for ids that could not be run.
    """
    out = Match()
    by_canonical: dict[str, list[str]] = {}
    by_cut: dict[str, list[str]] = {}
    for key in reported:
        by_canonical.setdefault(canonical(key, files), []).append(key)
        cut = key.split(None, 1)[0] if key.split() else key
        if cut != key:
            by_cut.setdefault(canonical(cut, files), []).append(key)
    for test in ids:
        if test in reported:
            out.tests[test] = reported[test].lower()
            continue
        key = canonical(test, files)
        found = by_canonical.get(key) or by_cut.get(key)
        if found:
            out.tests[test] = _combined([reported[k].lower() for k in found])
            out.resolved[test] = list(found)
            continue
        out.tests[test] = MISSING
        out.unmatched[test] = (unresolved or {}).get(test) or "no test of the run has this id"
    return out
