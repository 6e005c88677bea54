"""SWE-bench's per-version specs -> a row's commands; its log parsers on the output of real runners."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lightswe.tasks.datasets import from_record

pytest.importorskip("swebench.harness.constants", reason="optional extra: pip install 'lightswe[swebench]'")
from lightswe.tasks import specs  # noqa: E402

if not specs.available():
    pytest.skip("this swebench release has no per-version specs (use swebench>=3,<5)", allow_module_level=True)


def row(repo: str, version: str, ids: list[str], **extra) -> dict:
    return {"repo": repo, "instance_id": f"{repo.replace('/', '__')}-1", "base_commit": "b" * 40, "patch": "",
            "problem_statement": "p", "version": version, "FAIL_TO_PASS": json.dumps(ids), "PASS_TO_PASS": "[]",
            "environment_setup_commit": "b" * 40, **extra}


def test_a_pytest_repository_takes_python_pins_and_install_from_its_spec():
    task = from_record(row("pytest-dev/pytest", "5.4", ["testing/test_x.py::test_y"]))
    assert task.python_version == "3.9"
    assert "pluggy==0.13.1" in task.install_command and task.install_command.endswith("( python -m pip install -e . )")
    assert task.test_command.startswith("python -m pytest -p no:cacheprovider") and task.log_parser == ""
    assert task.metadata["spec"] == "swebench:pytest-dev/pytest@5.4"


def test_django_and_sympy_rows_take_their_runner_and_log_parser():
    django = from_record(row("django/django", "5.0", ["test_x (utils_tests.test_text.TestUtilsText)"],
                             install_command="python -m pip install -e ."))
    assert django.install_command == "python -m pip install -e ."  # given in the row: kept
    assert django.test_command.endswith("./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1")
    assert django.log_parser == "django/django" and django.python_version == "3.11"
    assert specs.directives(django) == ["utils_tests.test_text.TestUtilsText"]
    sympy = from_record(row("sympy/sympy", "1.12", ["test_sympy_thing"]))
    assert sympy.log_parser == "sympy/sympy" and "bin/test" in sympy.test_command


def test_explicit_commands_are_kept_and_unknown_versions_keep_the_defaults():
    own = from_record(row("pytest-dev/pytest", "5.4", ["t.py::t"], install_command="make", test_command="pytest"))
    assert (own.install_command, own.test_command) == ("make", "pytest") and "spec" not in own.metadata
    unknown = from_record(row("someone/thing", "0.1", ["t.py::t"]))
    assert unknown.install_command == "python -m pip install -e ." and unknown.log_parser == ""


def test_non_pytest_ids_without_any_spec_are_refused_with_the_fix():
    with pytest.raises(specs.SpecError, match="give test_command and log_parser"):
        from_record(row("someone/thing", "0.1", ["test_x (mod.Class)"]))


def test_the_django_parser_reads_real_unittest_output(tmp_path):
    """The runner Django's runtests.py uses (unittest, verbosity 2), parsed by swebench's Django parser."""
    (tmp_path / "mod_tests.py").write_text(
        "import unittest\nclass T(unittest.TestCase):\n    def test_ok(self):\n        pass\n"
        "    def test_bad(self):\n        self.assertEqual(1, 2)\n")
    out = subprocess.run([sys.executable, "-m", "unittest", "-v", "mod_tests"], cwd=tmp_path, capture_output=True,
                         text=True)
    parsed = specs.log_parser("django/django")(out.stdout + out.stderr, None)
    from lightswe.tasks.test_ids import match

    found = match(["test_ok (mod_tests.T)", "test_bad (mod_tests.T)"], parsed)
    assert found.tests == {"test_ok (mod_tests.T)": "passed", "test_bad (mod_tests.T)": "failed"}
