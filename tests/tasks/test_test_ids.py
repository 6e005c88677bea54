"""Published test ids (cut short, foreign paths, unittest/Django and sympy style) against real report shapes."""

from __future__ import annotations

from lightswe.tasks.test_ids import MISSING, addressable, canonical, match, pytest_targets, resolve_file

FILES = {"tests/test_x.py", "tests/test_y.py", "src/pkg/core.py"}


def test_a_foreign_path_resolves_to_the_repository_file():
    assert resolve_file("/home/ci/work/proj/tests/test_x.py", FILES) == "tests/test_x.py"
    assert resolve_file("tests/test_x.py", FILES) == "tests/test_x.py"
    assert resolve_file("/home/ci/other.py", FILES) is None


def test_unaddressable_ids_run_their_file_and_clean_ids_run_as_they_are():
    ids = ["tests/test_x.py::test_y[a", "tests/test_y.py::test_ok", "/srv/build/repo/tests/test_y.py::test_other",
           "tests/gone.py::test_z", "tests/test_y.py::TestC::test_m[x-1]"]
    targets, unresolved = pytest_targets(ids, FILES)
    assert targets == ["tests/test_x.py", "tests/test_y.py"]  # test_y.py runs whole: one of its ids is foreign
    assert list(unresolved) == ["tests/gone.py::test_z"]
    assert addressable("tests/test_y.py::TestC::test_m[x-1]", FILES)
    assert not addressable("tests/test_x.py::test_read[/tmp/pytest-of-ci/pytest-3/d0/a.txt]", FILES)
    only_clean, _ = pytest_targets(["tests/test_y.py::test_ok", "tests/test_y.py::test_two"], FILES)
    assert only_clean == ["tests/test_y.py::test_ok", "tests/test_y.py::test_two"]


def test_cut_short_ids_stand_for_every_parametrization_they_cut():
    reported = {"tests/test_x.py::test_y[a b-1]": "passed", "tests/test_x.py::test_y[a c-2]": "passed",
                "tests/test_x.py::test_y[ab]": "failed", "tests/test_x.py::test_z[q r]": "failed"}
    found = match(["tests/test_x.py::test_y[a", "tests/test_x.py::test_z[q"], reported, FILES)
    assert found.tests == {"tests/test_x.py::test_y[a": "passed", "tests/test_x.py::test_z[q": "failed"}
    assert sorted(found.resolved["tests/test_x.py::test_y[a"]) == ["tests/test_x.py::test_y[a b-1]",
                                                                   "tests/test_x.py::test_y[a c-2]"]
    reported["tests/test_x.py::test_y[a c-2]"] = "failed"  # all of them must pass
    assert match(["tests/test_x.py::test_y[a"], reported, FILES).tests["tests/test_x.py::test_y[a"] == "failed"


def test_foreign_paths_in_the_file_part_and_in_parameters_match():
    reported = {"tests/test_x.py::test_read[/tmp/pytest-of-root/pytest-0/test_read0/a.txt]": "passed",
                "tests/test_x.py::test_plain": "failed"}
    ids = ["tests/test_x.py::test_read[/tmp/pytest-of-ci/pytest-7/test_read0/a.txt]",
           "/home/ci/proj/tests/test_x.py::test_plain"]
    found = match(ids, reported, FILES)
    assert found.tests == {ids[0]: "passed", ids[1]: "failed"} and not found.unmatched


def test_an_unmatched_id_counts_against_itself_only_and_says_why():
    reported = {"tests/test_x.py::test_a": "passed"}
    found = match(["tests/test_x.py::test_a", "tests/test_x.py::test_renamed", "tests/gone.py::t"], reported, FILES,
                  unresolved={"tests/gone.py::t": "its file 'tests/gone.py' is not in the repository"})
    assert found.tests == {"tests/test_x.py::test_a": "passed", "tests/test_x.py::test_renamed": MISSING,
                           "tests/gone.py::t": MISSING}
    assert "not in the repository" in found.unmatched["tests/gone.py::t"]
    assert found.unmatched["tests/test_x.py::test_renamed"]


def test_unittest_ids_match_with_and_without_the_method_name():
    # Python < 3.11 printed "test_x (mod.Class)", Python >= 3.11 prints "test_x (mod.Class.test_x)"
    assert canonical("test_x (mod.Class.test_x)") == canonical("test_x (mod.Class)") == "test_x (mod.Class)"
    reported = {"test_x (utils_tests.test_text.TestUtilsText.test_x)": "PASSED",
                "test_y (utils_tests.test_text.TestUtilsText)": "FAILED", "test_sympy_style": "PASSED"}
    found = match(["test_x (utils_tests.test_text.TestUtilsText)", "test_y (utils_tests.test_text.TestUtilsText)",
                   "test_sympy_style"], reported)
    assert found.tests == {"test_x (utils_tests.test_text.TestUtilsText)": "passed",
                           "test_y (utils_tests.test_text.TestUtilsText)": "failed", "test_sympy_style": "passed"}
