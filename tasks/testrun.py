"""Run a repository's pytest suite in a sandbox for the synthesizer: the environment grader's runner, as root.

Why JUnit XML and not the log: test ids in the log are truncated and mixed with output. The one parser and
command builder live in :mod:`lightswe.envs.grading` so that task ids and grading ids always agree; this
module only fixes the synthesizer's defaults (root user, larger output kept for error messages).
"""

from __future__ import annotations

from lightswe.envs.grading import (
    ERROR,
    FAILED,
    PASSED,
    SKIPPED,
    JUnitReport,
    TestRun,
    parse_junit,
    pytest_command,
    run_pytest,
)

__all__ = ["ERROR", "FAILED", "PASSED", "SKIPPED", "JUnitReport", "TestRun", "parse_junit", "pytest_command",
           "run_tests"]


def run_tests(sandbox, test_command: str, *, test_ids: list[str] | None = None, timeout: float = 300,
              user: str = "root") -> TestRun:
    """Run the suite (or ``test_ids``) in ``sandbox`` and parse the JUnit report it wrote."""
    return run_pytest(sandbox, test_command, test_ids, timeout=timeout, user=user, max_output_bytes=256 * 1024)
