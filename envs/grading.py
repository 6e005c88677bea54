"""Run a task's tests in a sandbox and grade a submission, from pytest's JUnit XML.

Grading resists tampering: the agent's leftover processes are killed; the task's test files, every tracked
``conftest.py`` and the pytest configuration files are restored from the base commit; untracked
``conftest.py``/``sitecustomize.py``/``*.pth`` files the agent made are removed; the task's ``test_patch`` is
applied; then the tests run as the non-root agent user with ``--junitxml``. Outcomes come from the XML and are
cross-checked with pytest's exit code (0 iff every selected test passed): a disagreement scores 0.

``run_tests`` is also what task validation uses (the tasks part) to record FAIL_TO_PASS/PASS_TO_PASS.
"""

from __future__ import annotations

import shlex
import time
import xml.etree.ElementTree as ET
from collections.abc import Collection
from dataclasses import dataclass, field

from lightswe.envs.sandbox import Sandbox
from lightswe.tasks.instance import TaskInstance

JUNIT_PATH = "/tmp/lightswe-junit.xml"
_CONFIG_FILES = ("pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "conftest.py")
PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"


@dataclass(kw_only=True, slots=True)
class JUnitReport:
    """What pytest's JUnit XML says: the one record of a test run's results (grading and task synthesis)."""

    outcomes: dict[str, str] = field(default_factory=dict)  # node id -> passed/failed/error/skipped
    messages: dict[str, str] = field(default_factory=dict)  # node id -> failure text (failed/error only)
    collection_errors: int = 0  # errors not attached to a test (a module that failed to import)
    collection_error: str = ""  # the first collection error's text (its cause, for messages)
    unaddressable: set[str] = field(default_factory=set)  # ids whose file could not be found (see nodeid)


@dataclass(kw_only=True, slots=True)
class TestRun:
    outcomes: dict[str, str] = field(default_factory=dict)  # pytest node id -> passed/failed/error/skipped
    messages: dict[str, str] = field(default_factory=dict)  # node id -> failure text (failed/error only)
    collection_errors: int = 0
    collection_error: str = ""
    unaddressable: set[str] = field(default_factory=set)
    unresolved: dict[str, str] = field(default_factory=dict)  # task ids that could not be run -> why
    files: set[str] = field(default_factory=set)  # the repository's files (to match published ids)
    whole_files: bool = False  # whole test files ran (other tests of them may fail without consequence)
    exit_code: int = 0
    output: str = ""  # the runner's output (capped)
    timed_out: bool = False
    duration_s: float = 0.0

    def ids(self, outcome: str) -> set[str]:
        return {k for k, v in self.outcomes.items() if v == outcome}

    @property
    def passed(self) -> set[str]:
        return self.ids(PASSED)


@dataclass(kw_only=True, slots=True)
class Grade:
    reward: float
    tests: dict[str, str]  # every FAIL_TO_PASS and PASS_TO_PASS id -> outcome ("missing" if not reported)
    fail_to_pass: dict[str, bool] = field(default_factory=dict)
    pass_to_pass: dict[str, bool] = field(default_factory=dict)
    reason: str = ""
    exit_code: int = 0
    duration_s: float = 0.0
    unmatched: dict[str, str] = field(default_factory=dict)  # published ids that matched no test -> why
    model_patch: str = ""  # the agent's change against the base commit (binary-safe git diff), as graded


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


def pytest_command(test_command: str, test_ids: list[str] | None = None, junit: str = JUNIT_PATH) -> str:
    """``test_command`` plus JUnit output (xunit1, so ``file`` is recorded) and optional node ids."""
    ids = " ".join(shlex.quote(t) for t in (test_ids or []))
    return f"{test_command} -o junit_family=xunit1 --junitxml={junit} {ids}".strip()


def run_pytest(box: Sandbox, test_command: str, test_ids: list[str] | None = None, *, timeout: float = 900.0,
               user: str = "agent", max_output_bytes: int = 64 * 1024) -> TestRun:
    """Run ``test_command`` on ``test_ids`` (default: what the command selects) and parse its JUnit report."""
    ids = list(test_ids or [])
    files = {t.split("::", 1)[0] for t in ids}
    if not ids or any("::" not in t for t in ids):  # folders or the whole suite: the ids' files are unknown
        listed = box.exec("git ls-files -co --exclude-standard", timeout=60, user="root",
                          max_output_bytes=16 * 1024 * 1024)
        if listed.exit_code == 0:
            files.update(listed.output.splitlines())
    box.exec(f"rm -f {JUNIT_PATH}", timeout=10, user="root")
    result = box.exec(pytest_command(test_command, ids), timeout=timeout, user=user,
                      max_output_bytes=max_output_bytes)
    run = TestRun(exit_code=result.exit_code, output=result.output, timed_out=result.timed_out,
                  duration_s=result.duration_s)
    try:
        report = parse_junit(box.read_file(JUNIT_PATH, max_bytes=64 * 1024 * 1024), files)
    except (FileNotFoundError, ET.ParseError):
        return run  # pytest did not start (import error in conftest, timeout): no outcomes
    run.outcomes, run.messages = report.outcomes, report.messages
    run.collection_errors, run.unaddressable = report.collection_errors, report.unaddressable
    run.collection_error = report.collection_error
    return run


def test_files_of(instance: TaskInstance) -> list[str]:
    files = set(instance.test_files)
    files.update(test.split("::", 1)[0] for test in [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS])
    return sorted(files)


def repo_files(box: Sandbox) -> set[str]:
    """Files of the base commit (``git ls-tree``: reads objects only, runs nothing the agent configured)."""
    listed = box.exec(f"git ls-tree -r --name-only -z {box.base_commit or 'HEAD'}", timeout=60, user="root",
                      max_output_bytes=64 * 1024 * 1024)
    return {p for p in listed.output.split("\0") if p} if listed.exit_code == 0 else set()


def run_tests(box: Sandbox, instance: TaskInstance, test_ids: list[str] | None = None, *,
              timeout: float = 900.0) -> TestRun:
    """Run the task's tests (default all of its ids) as the agent user; outcomes keyed by the runner's ids.

    pytest rows (``log_parser`` empty): ids pytest can address run as they are, the files of the others run
    whole (see :mod:`lightswe.tasks.test_ids`); if pytest still exits 4 (an id it cannot find), the ids' files
    run whole. Other runners (``log_parser`` names a swebench parser): ``test_command`` plus SWE-bench's test
    directives, outcomes from that parser. Published ids are matched to these outcomes by ``grade``.
    """
    from lightswe.tasks import specs, test_ids as published

    ids = test_ids if test_ids is not None else [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS]
    files = repo_files(box) | set(published.files_of(ids, None))
    if instance.log_parser:
        parser = specs.log_parser(instance.log_parser)
        command = " ".join([instance.test_command, *(shlex.quote(d) for d in specs.directives(instance))])
        result = box.exec(command, timeout=timeout, user="agent", max_output_bytes=16 * 1024 * 1024)
        run = TestRun(exit_code=result.exit_code, output=result.output, timed_out=result.timed_out,
                      duration_s=result.duration_s, files=files, whole_files=True)
        run.outcomes = {k: v.lower() for k, v in parser(result.output, None).items()}
        return run
    targets, unresolved = published.pytest_targets(ids, files)
    run = run_pytest(box, instance.test_command, targets, timeout=timeout, user="agent") if targets else TestRun()
    if run.exit_code == 4 and not run.outcomes and any("::" in t for t in targets):
        run = run_pytest(box, instance.test_command, published.files_of(ids, files), timeout=timeout, user="agent")
        run.whole_files = True
    run.whole_files = run.whole_files or any("::" not in t for t in targets)
    run.unresolved, run.files = unresolved, files
    return run


def model_patch(box: Sandbox) -> str:
    """The agent's change against the base commit, new files included, as ``git diff --binary`` text.

    Uses a temporary index (the agent's index is left alone) and disables hooks, fsmonitor, external diff and
    textconv drivers. '' when nothing changed or git fails.
    """
    base = box.base_commit or "HEAD"
    script = ("export GIT_INDEX_FILE=$(mktemp) && trap 'rm -f $GIT_INDEX_FILE' EXIT && "
              "G='git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c diff.external= -c core.attributesFile=' && "
              f"$G read-tree {base} && $G add -A . && $G diff --cached --binary --no-ext-diff --no-textconv {base}")
    result = box.exec(script, timeout=120, user="agent", max_output_bytes=32 * 1024 * 1024)
    return result.output if result.exit_code == 0 and not result.truncated else ""


def restore_for_grading(box: Sandbox, instance: TaskInstance) -> str:
    """Put the task's tests and test configuration back as the task defines them; '' or what failed."""
    base = box.base_commit or "HEAD"
    listed = box.exec(f"git ls-tree -r --name-only {base}", timeout=60, user="root", kill_first="agent",
                      max_output_bytes=16 * 1024 * 1024)
    if listed.exit_code != 0 or listed.truncated:
        return f"listing the base commit's files failed: {listed.output[-500:]}"
    wanted = set(test_files_of(instance))
    restore = [p for p in listed.output.splitlines() if p in wanted or p.rsplit("/", 1)[-1] in _CONFIG_FILES]
    script = ("git ls-files --others -z -- '*conftest.py' '*sitecustomize.py' '*usercustomize.py' '*.pth' "
              "| xargs -0 -r rm -f")
    if restore:
        script = (f"git checkout -q {base} -- " + " ".join(shlex.quote(p) for p in restore)) + " && " + script
    result = box.exec(script, timeout=120, user="agent")
    if result.exit_code != 0:
        return f"restoring the test files failed: {result.output[-500:]}"
    if instance.test_patch.strip():
        applied = box.exec("git apply --whitespace=nowarn -", timeout=60, stdin=instance.test_patch.encode())
        if applied.exit_code != 0:
            return f"the task's test_patch does not apply: {applied.output[-500:]}"
    return ""


def grade(box: Sandbox, instance: TaskInstance, *, timeout: float = 900.0) -> Grade:
    """Reward 1.0 iff every FAIL_TO_PASS passes and every PASS_TO_PASS passes, per JUnit XML and exit code."""
    from lightswe.tasks.test_ids import match

    start = time.perf_counter()
    wanted = [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS]
    patch = model_patch(box)
    problem = restore_for_grading(box, instance)
    if problem:
        return Grade(reward=0.0, tests={t: "missing" for t in wanted}, reason=problem,
                     duration_s=time.perf_counter() - start, model_patch=patch)
    run = run_tests(box, instance, wanted, timeout=timeout)
    matched = match(wanted, run.outcomes, run.files, run.unresolved)
    tests = matched.tests
    f2p = {t: tests[t] == "passed" for t in instance.FAIL_TO_PASS}
    p2p = {t: tests[t] == "passed" for t in instance.PASS_TO_PASS}
    all_pass = all(f2p.values()) and all(p2p.values())
    failures = {k for k, v in run.outcomes.items() if v in (FAILED, ERROR)}
    # The exit code cross-check: 0 iff nothing failed (when only the task's ids ran: iff they all passed).
    consistent = (run.exit_code == 0) == (not failures and not run.collection_errors) if run.whole_files \
        else all_pass == (run.exit_code == 0)
    if instance.log_parser:
        consistent = True  # runners graded from their log (SWE-bench's parsers) have no such contract
    if run.timed_out:
        reason = f"the test run timed out after {timeout:g} s"
    elif not run.outcomes and not run.collection_errors:
        runner = "the test command" if instance.log_parser else "pytest"
        reason = (f"{runner} reported no test (exit code {run.exit_code}); last lines of `{instance.test_command}`:"
                  f"\n{_tail(run.output)}")
    elif not consistent:
        reason = f"pytest exit code {run.exit_code} disagrees with the JUnit report"
    elif not all_pass:
        failing = [t for t, ok in {**f2p, **p2p}.items() if not ok]
        reason = f"{len(failing)} test(s) not passing, e.g. {failing[0]} ({tests[failing[0]]})"
        if run.collection_error:
            reason = f"collection error: {_tail(run.collection_error, 8)}\n{reason}"
        elif failing[0] in matched.unmatched:
            reason += f": {matched.unmatched[failing[0]]}"
        elif run.messages.get(failing[0]):
            reason += f": {_tail(run.messages[failing[0]], 6)}"
    else:
        reason = "all FAIL_TO_PASS and PASS_TO_PASS tests pass"
    if matched.unmatched and all_pass is False:
        reason += f" [{len(matched.unmatched)} published id(s) matched no test; see info['unmatched']]"
    reward = 1.0 if all_pass and consistent and not run.timed_out else 0.0
    return Grade(reward=reward, tests=tests, fail_to_pass=f2p, pass_to_pass=p2p, reason=reason,
                 exit_code=run.exit_code, duration_s=time.perf_counter() - start, unmatched=matched.unmatched,
                 model_patch=patch)


def _tail(text: str, lines: int = 12, width: int = 2000) -> str:
    """The last ``lines`` non-empty lines of ``text`` (at most ``width`` characters): where causes are."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-width:]
