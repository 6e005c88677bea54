"""JUnit XML from a real pytest run -> node ids that pytest itself reports, outcomes and failure text."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from lightswe.tasks.testrun import parse_junit


def test_parse_junit_of_a_real_run(tmp_path):
    tests = tmp_path / "pkg" / "tests"
    tests.mkdir(parents=True)
    (tests / "test_a.py").write_text(textwrap.dedent('''
        import pytest

        def test_pass():
            assert 1

        def test_fail():
            assert [1, 2] == [1, 3]

        @pytest.mark.parametrize("x", [1, "a b"])
        def test_param(x):
            assert x

        class TestGroup:
            def test_error(self, missing_fixture):
                pass

            def test_skip(self):
                pytest.skip("no")
    '''))
    junit = tmp_path / "out.xml"
    run_pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
                  f"--junitxml={junit}", "-q", "pkg"]
    subprocess.run(run_pytest, cwd=tmp_path, capture_output=True)
    collected = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                                "pkg/tests/test_a.py"], cwd=tmp_path, capture_output=True, text=True).stdout
    report = parse_junit(junit.read_text())
    outcomes, messages, collection_errors = report.outcomes, report.messages, report.collection_errors
    assert set(outcomes) == {line for line in collected.splitlines() if "::" in line} and not collection_errors
    prefix = "pkg/tests/test_a.py::"
    assert outcomes[prefix + "test_pass"] == "passed"
    assert outcomes[prefix + "test_fail"] == "failed"
    assert outcomes[prefix + "test_param[a b]"] == "passed"
    assert outcomes[prefix + "TestGroup::test_error"] == "error"
    assert outcomes[prefix + "TestGroup::test_skip"] == "skipped"
    assert "E       assert [1, 2] == [1, 3]" in messages[prefix + "test_fail"]
    # a module that cannot be imported stops pytest at collection: counted, never mistaken for a test
    (tests / "test_broken.py").write_text("import no_such_module_here\n")
    subprocess.run(run_pytest, cwd=tmp_path, capture_output=True)
    report = parse_junit(junit.read_text())
    outcomes, messages, collection_errors = report.outcomes, report.messages, report.collection_errors
    assert collection_errors == 1 and not outcomes
