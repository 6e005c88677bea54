"""Run a repository's pytest suite in a sandbox and read the outcome of every test from JUnit XML.

Why JUnit XML and not the log: test ids in the log are truncated and mixed with output. pytest's ``xunit1``
family records each test's ``file`` so that the pytest node id (``tests/test_x.py::TestA::test_b[1]``) can be
rebuilt exactly; the failure text (``E   assert 1 == 2`` lines) feeds the synthesizer's problem statements.
"""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

JUNIT_PATH = "/tmp/lightswe-tasks-junit.xml"
PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"


@dataclass(kw_only=True, slots=True)
class TestRun:
    outcomes: dict[str, str] = field(default_factory=dict)  # node id -> passed/failed/error/skipped
    messages: dict[str, str] = field(default_factory=dict)  # node id -> failure text (failed/error only)
    exit_code: int = 0
    timed_out: bool = False
    duration_s: float = 0.0
    collection_errors: int = 0  # errors not attached to a test (import errors at collection)
    unaddressable: set[str] = field(default_factory=set)  # ids a grader cannot select (see parse_junit)
    output_tail: str = ""

    def ids(self, outcome: str) -> set[str]:
        return {k for k, v in self.outcomes.items() if v == outcome}

    @property
    def passed(self) -> set[str]:
        return self.ids(PASSED)


def node_id(case: ET.Element) -> str:
    """The pytest node id of a ``<testcase>``: the environment grader's own function, so ids always agree."""
    from lightswe.envs.grading import nodeid

    return nodeid(case)


def addressable(case: ET.Element) -> bool:
    """False for a test method inherited from a class in another file: JUnit's ``file`` then names the base
    class's file (``tests/__init__.py``), so the rebuilt node id does not select the test; such tests are
    left out of FAIL_TO_PASS/PASS_TO_PASS."""
    classname, path = case.get("classname", ""), case.get("file", "")
    module = path[:-3].replace("/", ".") if path.endswith(".py") else path
    return not classname or classname == module or classname.startswith(module + ".")


def unaddressable_ids(xml_text: str) -> set[str]:
    return {node_id(case) for case in ET.fromstring(xml_text).iter("testcase") if not addressable(case)}


def parse_junit(xml_text: str) -> tuple[dict[str, str], dict[str, str], int]:
    """(outcomes, failure messages, collection errors) from pytest's JUnit XML."""
    root = ET.fromstring(xml_text)
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    collection_errors = 0
    for case in root.iter("testcase"):
        nid = node_id(case)
        outcome = PASSED
        for child in case:
            if child.tag in ("failure", "error"):
                # an error in teardown of a passed test still marks it as not passing
                outcome = FAILED if child.tag == "failure" else ERROR
                messages[nid] = (child.text or child.get("message") or "").strip("\n")  # traceback with E lines
                break
            if child.tag == "skipped":
                outcome = SKIPPED
        if not case.get("classname") and outcome == ERROR:  # a module that failed to import (collection)
            collection_errors += 1
            continue
        if nid in outcomes and outcomes[nid] == PASSED and outcome != PASSED:
            outcomes[nid] = outcome  # setup ok, teardown error: count as error
        elif nid not in outcomes:
            outcomes[nid] = outcome
    return outcomes, messages, collection_errors


def pytest_command(test_command: str, test_ids: list[str] | None = None, junit: str = JUNIT_PATH) -> str:
    """``test_command`` plus JUnit output (xunit1, so ``file`` is recorded) and optional node ids."""
    ids = " ".join(shlex.quote(t) for t in (test_ids or []))
    return (f"rm -f {junit}; {test_command} -o junit_family=xunit1 --junitxml={junit} {ids}").strip()


def run_tests(sandbox, test_command: str, *, test_ids: list[str] | None = None, timeout: float = 300,
              user: str = "root") -> TestRun:
    """Run the suite (or ``test_ids``) in ``sandbox`` and parse the JUnit report it wrote."""
    result = sandbox.exec(pytest_command(test_command, test_ids), timeout=timeout, user=user)
    run = TestRun(exit_code=result.exit_code, timed_out=result.timed_out, duration_s=result.duration_s,
                  output_tail=result.output[-3000:])
    try:
        xml_text = sandbox.read_file(JUNIT_PATH, max_bytes=64 * 1024 * 1024).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return run  # pytest did not start (import error in conftest, timeout): no outcomes
    try:
        run.outcomes, run.messages, run.collection_errors = parse_junit(xml_text)
        run.unaddressable = unaddressable_ids(xml_text)
    except ET.ParseError:
        pass
    return run
