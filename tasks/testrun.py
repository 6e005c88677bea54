"""Run a repository's pytest suite in a sandbox for the synthesizer: the environment grader's runner.

Why JUnit XML and not the log: test ids in the log are truncated and mixed with output. The one parser and
command builder live in :mod:`lightswe.envs.pytest_run` (the hardened ``python -I -B -m pytest`` with only the
image's plugins), so that the ids and outcomes a task records are the ones grading sees; this module only fixes
the synthesizer's defaults (its own container, where it runs as root; larger output kept for error messages).
It never runs in an agent's container.
"""

from __future__ import annotations

from lightswe.envs.pytest_run import (
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
    """Run the suite (or ``test_ids``) in ``sandbox`` (the synthesizer's own) and parse its JUnit report."""
    return run_pytest(sandbox, test_command, test_ids, timeout=timeout, user=user, max_output_bytes=256 * 1024)
