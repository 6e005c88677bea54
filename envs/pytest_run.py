"""Run pytest in a sandbox in a Python the repository cannot shadow or extend, and read its JUnit XML.

One runner for grading and for task synthesis, so that the test ids a task records are the ids grading sees.
:func:`pytest_command` hardens a task's ``test_command`` (``python -m pytest ...`` or ``pytest ...``):

- ``python -I -B -m pytest``: isolated mode (no current directory or script directory on ``sys.path``, no user
  site-packages, every ``PYTHON*`` variable ignored) and no bytecode written; a ``pytest.py``, ``pytest/`` or
  ``sitecustomize.py`` in the repository cannot stand in for the installed ones;
- ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`` plus ``-p <module>`` for each ``pytest11`` entry point installed in
  the image (found by :func:`probe_image` in a pristine container, outside ``/testbed``), and
  ``-p no:cacheprovider``: no plugin comes from the repository, no state from an earlier run;
- ``-o junit_family=xunit1 --junitxml=...`` so that each case records its file (see :func:`nodeid`).

Outcomes come from the XML (:func:`parse_junit`) and are cross-checked with pytest's exit code by the grader.
Why JUnit XML and not the log: test ids in the log are truncated and mixed with output.
"""

from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from lightswe.envs.agent_diff import PRISTINE_GIT, PRISTINE_GIT_ENV
from lightswe.errors import UserInputError

JUNIT_PATH = "/tmp/lightswe-junit.xml"
PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
RUNNER_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
_PYTHONS = ("python", "python3")


@dataclass(kw_only=True, slots=True)
class JUnitReport:
    """What pytest's JUnit XML says: the one record of a test run's results (grading and task synthesis)."""

    outcomes: dict[str, str] = field(default_factory=dict)  # node id -> passed/failed/error/skipped
    messages: dict[str, str] = field(default_factory=dict)  # node id -> failure text (failed/error only)
    collection_errors: int = 0  # errors not attached to a test (a module that failed to import)
    collection_error: str = ""  # the first collection error's text (its cause, for messages)
    unaddressable: set[str] = field(default_factory=set)  # ids whose file could not be found (see nodeid)
    sources: dict[str, str] = field(default_factory=dict)  # node id -> the file its code is defined in (``file``)


@dataclass(kw_only=True, slots=True)
class TestRun:
    outcomes: dict[str, str] = field(default_factory=dict)  # pytest node id -> passed/failed/error/skipped
    messages: dict[str, str] = field(default_factory=dict)  # node id -> failure text (failed/error only)
    collection_errors: int = 0
    collection_error: str = ""
    unaddressable: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)  # node id -> the file its code is defined in
    exit_code: int = 0
    output: str = ""  # the runner's output (capped)
    timed_out: bool = False
    duration_s: float = 0.0
    runner_died: bool = False  # the sandbox's command runner died mid-run: the machine failed, not the tests

    def ids(self, outcome: str) -> set[str]:
        return {k for k, v in self.outcomes.items() if v == outcome}

    @property
    def passed(self) -> set[str]:
        return self.ids(PASSED)


def _case_path(case: ET.Element, files: Collection[str] | None) -> tuple[str, list[str]] | None:
    """(file, classes) of a JUnit xunit1 ``testcase``; None when its file cannot be determined.

    ``classname`` is pytest's node id with ``/`` -> ``.`` and ``.py`` dropped, but ``file`` is where the test
    function is *defined*: for a method inherited from a base class in another file (``tests/__init__.py``)
    the two disagree, and the file is then the longest dotted prefix of ``classname`` that names a file in
    ``files`` (the repository's files).
    """
    classname, path = case.get("classname", ""), case.get("file") or ""
    module = path[:-3].replace("/", ".") if path.endswith(".py") else path
    if not classname or classname == module:
        return path, []
    if classname.startswith(module + "."):
        return path, classname[len(module) + 1:].split(".")
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        candidate = "/".join(parts[:cut]) + ".py"
        if files is not None and candidate in files:
            return candidate, parts[cut:]
    return None


def nodeid(case: ET.Element, files: Collection[str] | None = None) -> str:
    """pytest node id of a JUnit ``testcase`` written with ``junit_family=xunit1`` (has ``file``).

    ``files``: the repository's files, needed for tests inherited from a class in another file (see
    ``_case_path``); without a match the id is built from ``file`` and may not select the test.
    """
    name, classname, path = case.get("name", ""), case.get("classname", ""), case.get("file")
    if not path:  # xunit2: best effort from the dotted class name
        return f"{classname.replace('.', '/')}.py::{name}"
    found = _case_path(case, files)
    file, classes = found if found is not None else (path, [])
    return "::".join([file, *[c for c in classes if c], name])


def parse_junit(xml: bytes | str, files: Collection[str] | None = None) -> JUnitReport:
    """Outcomes, failure messages and collection errors of every test case in a JUnit XML report.

    ``files``: the repository's files, to rebuild the ids of inherited tests (see ``nodeid``).
    """
    report = JUnitReport()
    for case in ET.fromstring(xml).iter("testcase"):
        tags = {child.tag for child in case}
        outcome = (ERROR if "error" in tags else FAILED if "failure" in tags
                   else SKIPPED if "skipped" in tags else PASSED)
        if not case.get("classname") and outcome == ERROR:  # a module that failed to import (collection)
            report.collection_errors += 1
            if not report.collection_error:
                report.collection_error = "\n".join(
                    (child.text or child.get("message") or "").strip() for child in case if child.tag == "error")
            continue
        key = nodeid(case, files)
        if case.get("file"):
            report.sources[key] = case.get("file")
        if case.get("file") and _case_path(case, files) is None:
            report.unaddressable.add(key)
        for child in case:
            if child.tag in ("failure", "error") and key not in report.messages:
                report.messages[key] = (child.text or child.get("message") or "").strip("\n")  # with E lines
                break
        if report.outcomes.get(key) in (FAILED, ERROR) and outcome == PASSED:
            continue  # a teardown error reported after a pass keeps the failure
        report.outcomes[key] = outcome
    return report




# ------------------------------------------------------------------------------------------ the command
def _is_python(token: str) -> bool:
    name = token.rsplit("/", 1)[-1]
    return name in _PYTHONS or (name.startswith("python3.") and name[8:].isdigit())


def pytest_command(test_command: str, test_ids: Sequence[str] | None = None, junit: str = JUNIT_PATH,
                   plugins: Sequence[str] = ()) -> str:
    """``test_command`` hardened (module docstring), with JUnit output and optional node ids appended.

    Raises :class:`~lightswe.errors.UserInputError` when ``test_command`` does not end in a pytest invocation
    (``python -m pytest ...``, ``pytest ...``, possibly after ``env K=V`` or ``cmd &&``).
    """
    tokens = shlex.split(test_command)
    at = None
    for i, token in enumerate(tokens):
        name = token.rsplit("/", 1)[-1]
        if name in ("pytest", "py.test") and (i == 0 or tokens[i - 1] not in ("-m", "-p")):
            at = ("script", i)
        elif _is_python(token):
            rest = tokens[i + 1:]
            if "-m" in rest and rest.index("-m") + 1 < len(rest) and rest[rest.index("-m") + 1] == "pytest":
                at = ("python", i)
    if at is None:
        raise UserInputError(f"test_command must run pytest (`python -m pytest ...` or `pytest ...`), got "
                             f"{test_command!r}; fix the task's test_command")
    kind, i = at
    if kind == "script":
        tokens[i:i + 1] = ["python3", "-I", "-B", "-m", "pytest"]
        pytest_at = i + 4
    else:
        tokens[i + 1:i + 1] = ["-I", "-B"]
        pytest_at = tokens.index("pytest", i + 3)
    extra = [] if "no:cacheprovider" in tokens else ["-p", "no:cacheprovider"]
    for plugin in plugins:
        extra += ["-p", plugin]
    tokens[pytest_at + 1:pytest_at + 1] = extra
    command = " ".join(t if t in ("&&", "||", ";", "|") else shlex.quote(t) for t in tokens)
    ids = " ".join(shlex.quote(t) for t in (test_ids or []))
    return f"{command} -o junit_family=xunit1 --junitxml={junit} {ids}".strip()


# ------------------------------------------------------------------------------------------ the image
@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What a pristine container of an image says about its Python (cached per image by :func:`probe_image`)."""

    plugins: tuple[str, ...]  # modules of the installed pytest11 entry points
    outside_modules: frozenset[str]  # top-level modules importable from outside the work tree (stdlib, site)


_PROBE = r"""
import importlib.metadata as m, json, pkgutil, sys
root = sys.argv[1].rstrip("/")
eps = m.entry_points()  # Python < 3.10: a dict of groups, no select()
eps = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])
plugins = sorted({ep.value.split(":")[0].strip() for ep in eps})
paths = [p for p in sys.path if p and not (p == root or p.startswith(root + "/"))]
names = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)  # the former: 3.10+
names |= {mod.name for mod in pkgutil.iter_modules(paths)}
print(json.dumps({"plugins": plugins, "outside": sorted(names)}))
"""
_FACTS: dict[str, ImageFacts] = {}


def probe_image(box, workdir: str = "/testbed", *, cache: bool = True) -> ImageFacts:
    """:class:`ImageFacts` of ``box``'s image; ``box`` must be pristine (nothing of an agent applied yet).

    Runs ``python3 -I`` as the non-root user outside the work tree. Cached per image name in this process.
    """
    key = f"{box.config.image}\0{workdir}"
    if cache and key in _FACTS:
        return _FACTS[key]
    result = box.exec(f"python3 -I -c {shlex.quote(_PROBE)} {shlex.quote(workdir)}", timeout=60, user="agent",
                      workdir="/", max_output_bytes=4 * 1024 * 1024)
    if result.exit_code != 0 or result.truncated:
        raise RuntimeError(f"probing the Python of {box.config.image} failed (exit {result.exit_code}): "
                           f"{result.output[-400:]}")
    data = json.loads(result.output.strip().splitlines()[-1])
    facts = ImageFacts(plugins=tuple(data["plugins"]), outside_modules=frozenset(data["outside"]))
    if cache:
        _FACTS[key] = facts
    return facts


# ------------------------------------------------------------------------------------------ a run
def list_files(box, user: str, workdir: str = "/testbed") -> set[str] | None:
    """Tracked and untracked, not ignored files of a *harness-owned* repository (never the agent's): for
    synthesis runs, where the JUnit ids of inherited tests need the repository's files."""
    listed = box.exec(f"{PRISTINE_GIT} -c safe.directory='*' ls-files -co --exclude-standard", timeout=60, user=user,
                      workdir=workdir, env=PRISTINE_GIT_ENV, max_output_bytes=16 * 1024 * 1024)
    return set(listed.output.splitlines()) if listed.exit_code == 0 and not listed.truncated else None


def drained(command: str, keep_bytes: int) -> str:
    """``command`` with all of its output read and only the last ``keep_bytes`` kept, and its own exit status.

    The sandbox stops reading a command's output at its cap and closes the pipe; pytest then dies of a broken
    pipe mid-run (exit 1, a partial JUnit report) although every test passed: a verbose test command (``-v``,
    ``-rA``) over a few hundred tests was 0.0 for the gold patch. ``tail`` reads everything (the end holds the
    summary and the causes)."""
    return f"{{ {command} ; }} 2>&1 | tail -c {int(keep_bytes)}; exit ${{PIPESTATUS[0]}}"


def run_pytest(box, test_command: str, test_ids: Sequence[str] | None = None, *, timeout: float = 900.0,
               user: str = "agent", max_output_bytes: int = 64 * 1024, files: Collection[str] | None = None,
               plugins: Sequence[str] | None = None, junit: str = JUNIT_PATH) -> TestRun:
    """Run the hardened ``test_command`` on ``test_ids`` (default: what it selects) and parse its JUnit report.

    ``files``: the repository's files (for ids of inherited tests, see :func:`nodeid`); listed with git in
    ``box`` when not given and needed (only for harness-owned repositories). ``plugins``: pytest plugin modules
    to load (default: :func:`probe_image` of ``box``). ``junit``: where pytest writes its report (grading
    passes a name the test process cannot guess, in a directory it cannot list).
    """
    ids = list(test_ids or [])
    if files is None:
        files = {t.split("::", 1)[0] for t in ids}
        if not ids or any("::" not in t for t in ids):  # folders or the whole suite: the ids' files are unknown
            files |= list_files(box, user) or set()
    if plugins is None:
        plugins = probe_image(box).plugins
    box.exec(f"rm -f {shlex.quote(junit)}", timeout=10, user=user, workdir="/")
    result = box.exec(drained(pytest_command(test_command, ids, junit=junit, plugins=plugins), max_output_bytes),
                      timeout=timeout, user=user, max_output_bytes=max_output_bytes + 4096, env=dict(RUNNER_ENV))
    run = TestRun(exit_code=result.exit_code, output=result.output, timed_out=result.timed_out,
                  duration_s=result.duration_s, runner_died=result.runner_died)
    try:
        report = parse_junit(box.read_file(junit, max_bytes=64 * 1024 * 1024), files)
    except (FileNotFoundError, IsADirectoryError, ValueError, ET.ParseError):
        return run  # pytest did not start (import error in conftest, timeout): no outcomes
    run.outcomes, run.messages = report.outcomes, report.messages
    run.collection_errors, run.unaddressable = report.collection_errors, report.unaddressable
    run.collection_error = report.collection_error
    run.sources = report.sources
    return run
