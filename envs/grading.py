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
from dataclasses import dataclass, field

from lightswe.envs.sandbox import Sandbox
from lightswe.tasks.instance import TaskInstance

JUNIT_PATH = "/tmp/lightswe-junit.xml"
_CONFIG_FILES = ("pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "conftest.py")


@dataclass(kw_only=True, slots=True)
class TestRun:
    outcomes: dict[str, str]  # pytest node id -> "passed" | "failed" | "error" | "skipped"
    exit_code: int
    output: str  # the runner's output (capped)
    timed_out: bool
    duration_s: float


@dataclass(kw_only=True, slots=True)
class Grade:
    reward: float
    tests: dict[str, str]  # every FAIL_TO_PASS and PASS_TO_PASS id -> outcome ("missing" if not reported)
    fail_to_pass: dict[str, bool] = field(default_factory=dict)
    pass_to_pass: dict[str, bool] = field(default_factory=dict)
    reason: str = ""
    exit_code: int = 0
    duration_s: float = 0.0


def nodeid(case: ET.Element) -> str:
    """pytest node id of a JUnit ``testcase`` written with ``junit_family=xunit1`` (has ``file``)."""
    name, classname, path = case.get("name", ""), case.get("classname", ""), case.get("file")
    if not path:  # xunit2: best effort from the dotted class name
        return f"{classname.replace('.', '/')}.py::{name}"
    module = path[:-3].replace("/", ".") if path.endswith(".py") else path
    classes = classname[len(module) + 1:].split(".") if classname.startswith(module + ".") else []
    return "::".join([path, *[c for c in classes if c], name])


def parse_junit(xml: bytes) -> dict[str, str]:
    """Node id -> outcome for every test case in a JUnit XML report."""
    outcomes: dict[str, str] = {}
    for case in ET.fromstring(xml).iter("testcase"):
        tags = {child.tag for child in case}
        outcome = ("error" if "error" in tags else "failed" if "failure" in tags
                   else "skipped" if "skipped" in tags else "passed")
        key = nodeid(case)
        if outcomes.get(key) in ("failed", "error") and outcome == "passed":
            continue  # a teardown error reported after a pass keeps the failure
        outcomes[key] = outcome
    return outcomes


def test_files_of(instance: TaskInstance) -> list[str]:
    files = set(instance.test_files)
    files.update(test.split("::", 1)[0] for test in [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS])
    return sorted(files)


def run_tests(box: Sandbox, instance: TaskInstance, test_ids: list[str] | None = None, *,
              timeout: float = 900.0) -> TestRun:
    """Run ``instance.test_command`` on ``test_ids`` (default all of the task's) with a JUnit report."""
    ids = test_ids if test_ids is not None else [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS]
    box.exec(f"rm -f {JUNIT_PATH}", timeout=10, user="root")
    cmd = (f"{instance.test_command} --junitxml={JUNIT_PATH} -o junit_family=xunit1 "
           + " ".join(shlex.quote(t) for t in ids))
    result = box.exec(cmd, timeout=timeout, user="agent", max_output_bytes=64 * 1024)
    try:
        outcomes = parse_junit(box.read_file(JUNIT_PATH))
    except (FileNotFoundError, ET.ParseError):
        outcomes = {}
    return TestRun(outcomes=outcomes, exit_code=result.exit_code, output=result.output,
                   timed_out=result.timed_out, duration_s=result.duration_s)


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
    start = time.perf_counter()
    wanted = [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS]
    problem = restore_for_grading(box, instance)
    if problem:
        return Grade(reward=0.0, tests={t: "missing" for t in wanted}, reason=problem,
                     duration_s=time.perf_counter() - start)
    run = run_tests(box, instance, wanted, timeout=timeout)
    tests = {t: run.outcomes.get(t, "missing") for t in wanted}
    f2p = {t: tests[t] == "passed" for t in instance.FAIL_TO_PASS}
    p2p = {t: tests[t] == "passed" for t in instance.PASS_TO_PASS}
    all_pass = all(f2p.values()) and all(p2p.values())
    if run.timed_out:
        reason = f"the test run timed out after {timeout:g} s"
    elif not run.outcomes:
        reason = f"no JUnit report (pytest exit code {run.exit_code}): {run.output[-300:]}"
    elif all_pass != (run.exit_code == 0):
        reason = f"pytest exit code {run.exit_code} disagrees with the JUnit report"
    elif not all_pass:
        failing = [t for t, ok in {**f2p, **p2p}.items() if not ok]
        reason = f"{len(failing)} test(s) not passing, e.g. {failing[0]} ({tests[failing[0]]})"
    else:
        reason = "all FAIL_TO_PASS and PASS_TO_PASS tests pass"
    reward = 1.0 if all_pass and run.exit_code == 0 and not run.timed_out else 0.0
    return Grade(reward=reward, tests=tests, fail_to_pass=f2p, pass_to_pass=p2p, reason=reason,
                 exit_code=run.exit_code, duration_s=time.perf_counter() - start)
