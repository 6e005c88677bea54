"""The one JUnit parser: ids of tests inherited from a class in another file are pytest's own node ids."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from lightswe.envs.grading import parse_junit, pytest_command


def _write(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))


def test_inherited_tests_get_pytest_node_ids(tmp_path):
    _write(tmp_path, {
        "tests/__init__.py": '''
            class Base:
                def test_inherited(self):
                    assert True

                def test_inherited_fails(self):
                    assert 1 == 2
        ''',
        "tests/base.py": '''
            import pytest

            class Mixin:
                @pytest.mark.parametrize("x", [1, 2])
                def test_param(self, x):
                    assert x

            def test_shared():
                assert True
        ''',
        "tests/test_x.py": '''
            from tests import Base
            from tests.base import Mixin, test_shared

            class TestFoo(Base):
                def test_own(self):
                    assert True

            class TestBar(Mixin):
                class TestInner(Base):
                    pass

            def test_plain():
                assert True
        ''',
    })
    junit = tmp_path / "out.xml"
    command = pytest_command(f"{sys.executable} -m pytest -p no:cacheprovider -q", ["tests"], str(junit))
    subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True)
    collected = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                                "tests"], cwd=tmp_path, capture_output=True, text=True).stdout
    expected = {line for line in collected.splitlines() if "::" in line}
    assert "tests/test_x.py::TestFoo::test_inherited" in expected and len(expected) == 9
    files = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.py")}
    report = parse_junit(junit.read_bytes(), files)
    assert set(report.outcomes) == expected and not report.unaddressable and not report.collection_errors
    assert report.outcomes["tests/test_x.py::TestFoo::test_inherited_fails"] == "failed"
    assert report.outcomes["tests/test_x.py::TestBar::TestInner::test_inherited"] == "passed"
    assert "assert 1 == 2" in report.messages["tests/test_x.py::TestFoo::test_inherited_fails"]
    # each rebuilt id selects exactly its test again
    rerun = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                            "tests/test_x.py::TestBar::test_param[2]", "tests/test_x.py::test_shared"],
                           cwd=tmp_path, capture_output=True, text=True).stdout
    assert "2 passed" in rerun
    # without the repository's files the file of an inherited test is unknown: flagged, not silently wrong
    blind = parse_junit(junit.read_bytes())
    assert "tests/__init__.py::test_inherited" in blind.unaddressable
    assert set(blind.outcomes) - blind.unaddressable <= expected
