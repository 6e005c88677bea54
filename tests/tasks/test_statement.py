"""Problem statements describe the symptom (call, expected vs actual) and never show the library's code."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from lightswe.tasks.statement import write_statement
from lightswe.tasks.testrun import parse_junit


def failure_of_real_run(tmp_path, library: str, test: str) -> tuple[str, str]:
    (tmp_path / "lib.py").write_text(textwrap.dedent(library))
    (tmp_path / "test_lib.py").write_text(textwrap.dedent(test))
    junit = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
                    f"--junitxml={junit}", "-q", "test_lib.py"], cwd=tmp_path, capture_output=True)
    messages = parse_junit(junit.read_text()).messages
    [(test_id, text)] = messages.items()
    return test_id, text


def test_assertion_failure_gives_expected_vs_actual(tmp_path):
    test_id, text = failure_of_real_run(tmp_path, '''
        def last(xs):
            secret_marker = len(xs) - 2  # the bug
            return xs[secret_marker]
    ''', '''
        from lib import last

        def test_last():
            data = [1, 2, 3]
            assert last(data) == 3
    ''')
    statement = write_statement(package="lib", call="last", failing=[test_id], failure_text=text, message=text)
    assert "`last`" in statement and "test_lib.py::test_last" in statement
    assert "def test_last():\n    data = [1, 2, 3]\n    assert last(data) == 3\n```" in statement  # the test, as written
    assert "I expected `3` but got `2`." in statement
    assert "secret_marker" not in statement  # library code (where the bug is) never shown


def test_exception_in_library_names_the_exception_not_the_line(tmp_path):
    test_id, text = failure_of_real_run(tmp_path, '''
        def parse(s):
            hidden_line = int(s[1:])
            return hidden_line
    ''', '''
        from lib import parse

        def test_parse():
            assert parse("") == 0
    ''')
    statement = write_statement(package="lib", call="parse", failing=[test_id, "test_lib.py::test_other"],
                                failure_text=text, message=text)
    assert "ValueError" in statement and "hidden_line" not in statement
    assert "and 1 other test" in statement and "`test_lib.py::test_other`" in statement


def test_expected_and_actual_follow_the_side_that_calls(tmp_path):
    test_id, text = failure_of_real_run(tmp_path, '''
        def ordinal(n):
            return "th"
    ''', '''
        from lib import ordinal

        def test_ordinal():
            ordinalized = "1st"
            assert ordinalized == "1" + ordinal(1)
    ''')
    statement = write_statement(package="lib", call="ordinal", failing=[test_id], failure_text=text, message=text)
    assert "I expected `'1st'` but got `'1th'`." in statement
