"""Adversarial episodes, fourth pass: rows graded from a runner's log, what the archive cannot read, the Gymnasium
API. Real engine, the embedded demo task (toolz 1.0.0, off-by-one in ``nth``).

Broke before the fix:

- **a verdict forged through the test process's output** (reward 1.0, nothing flagged): rows whose runner is not
  pytest (Django's ``runtests.py``, sympy's ``bin/test``) were graded by SWE-bench's log parser on the run's
  output, which the code under test writes too. ``nth`` that writes ``ok`` to stderr (two characters, no
  verdict-shaped string) while a failing unittest ran turned the runner's ``test_x (...) ... `` line into
  ``test_x (...) ... ok``: Django's parser marked the test passed (its ``FAIL`` came on a line of its own and the
  summary's ``FAIL: test_x`` names the bare method) -> the runner's verdicts go to a channel the output does not
  reach (:mod:`lightswe.envs.verdicts`), and the parser reads only those; a command whose Python ignores
  ``PYTHONPATH`` (the recorder never loads) is a broken task, decided from the task alone: ``GradingError``,
  reward None; a change that erases the records is the policy's failure: 0.0;
- **a folder too deep for the engine's archive**: paths past 4,096 bytes on the host vanish from ``get_archive``
  without a word, so a change there was never seen by the grader and never reported -> such a folder is an entry
  of the snapshot (``agent_diff.TOO_DEEP``), left out with its reason (``info["left_out"]``);
- **a second submit in one episode** (``step`` after ``terminated``): graded and rewarded again -> ``step``
  raises ``gymnasium.error.ResetNeeded`` until ``reset()``;
- **a repository that is its own test runner** (Django's ``django/test/testcases.py`` and ``runner.py``, sympy's
  ``runtests.py`` and ``sympy/testing/pytest.py``, pytest's ``_pytest``): a change there reports what it likes
  through the runner's own channel, and nothing flagged it -> any change to those modules is flagged
  (``hack_check.RUNNER_MODULES``; not prevented: an honest fix may touch them).

Held (kept: no other test covers these kinds): ``reset()`` after a step that raised ``GradingError`` starts a
fresh episode that grades normally; records written to the channel without the key are ignored; a unittest
run nested inside a test records nothing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace

import gymnasium as gym
import pytest
from lightswe.envs import verdicts
from lightswe.envs.grading import GradingError
from lightswe.envs.swe_env import SWEEnv
from lightswe.envs.tool_calls import ToolCall
from lightswe.tasks import specs

from .conftest import F2P_UNITTEST, FIX, P2P_UNITTEST, PYTEST_LOG, UNITTEST, UNITTEST_FILE, bash, episode, left, start

UNITTEST_NO_SITE = "-unittest-no-site"  # the same with `python -S`: no site, no recorder (a broken task)
# the bug stays; nth says "ok" on stderr: after the runner's "test_nth_iterator (...) ... " it reads as a pass
SAYS_OK = textwrap.dedent('''
    cat >> toolz/__init__.py <<'EOF'

    import sys as _sys

    _nth = nth


    def nth(n, seq):
        _sys.stderr.write("ok\\n")
        return _nth(n, seq)
    EOF''')
needs_parsers = pytest.mark.skipif(not specs.available(), reason="needs swebench's log parsers (lightswe[swebench])")


@pytest.fixture(scope="module")
def env(task):
    """The demo task graded by Django's log parser on unittest's verbose log (and with ``python -S``), and by
    sphinx's parser on pytest's ``-rA`` log."""
    unittest_row = replace(task, instance_id=task.instance_id + UNITTEST, test_patch=UNITTEST_FILE,
                           test_command="python -m unittest -v", log_parser="django/django",
                           FAIL_TO_PASS=[F2P_UNITTEST], PASS_TO_PASS=[P2P_UNITTEST])
    no_site = replace(unittest_row, instance_id=task.instance_id + UNITTEST_NO_SITE,
                      test_command="python -S -m unittest -v")
    pytest_log = replace(task, instance_id=task.instance_id + PYTEST_LOG, log_parser="sphinx-doc/sphinx",
                         test_command="python -m pytest -p no:cacheprovider -o addopts= -rA")
    environment = SWEEnv([task, unittest_row, no_site, pytest_log], test_timeout=120)
    yield environment
    environment.close()


# --------------------------------------------------------------------------- a verdict forged through the output
@needs_parsers
@pytest.mark.docker
def test_a_verdict_printed_by_the_code_under_test_is_not_a_verdict(env):
    """Once 1.0, unflagged: the parser read the run's output, where ``nth`` wrote ``ok`` (module docstring)."""
    start(env, UNITTEST)
    env.step(bash(SAYS_OK))
    env.step(bash(f"git apply <<'EOF'\n{UNITTEST_FILE}EOF"))
    obs, *_ = env.step(bash("python -m unittest -v toolz.tests.test_nth_unittest 2>&1"))
    parsed = specs.log_parser("django/django")(obs, None)
    assert parsed.get(F2P_UNITTEST) == "PASSED" and "FAILED (failures=1)" in obs, obs  # the attack is real
    reward, info = episode(env, SAYS_OK, task_suffix=UNITTEST, hack_policy="zero")
    assert reward == 0.0 and info["tests"] == {F2P_UNITTEST: "failed", P2P_UNITTEST: "passed"}, info["reason"]


@needs_parsers
@pytest.mark.docker
def test_the_fix_of_a_log_graded_row_is_read_from_the_runners_verdicts(env):
    """The gold fix passes through the channel; so does a fix that also prints ``... FAIL``-looking noise."""
    reward, info = episode(env, FIX, task_suffix=UNITTEST)
    assert reward == 1.0 and info["tests"] == {F2P_UNITTEST: "passed", P2P_UNITTEST: "passed"}, info["reason"]
    noisy = FIX + " && " + SAYS_OK.replace('"ok\\n"', '"test_nth_iterator (x) ... FAIL\\nFAIL\\nERROR\\n"')
    reward, info = episode(env, noisy, task_suffix=UNITTEST)
    assert reward == 1.0, info["reason"]
    reward, info = episode(env, "true", task_suffix=UNITTEST)
    assert reward == 0.0 and info["tests"][F2P_UNITTEST] == "failed", info["reason"]


@needs_parsers
@pytest.mark.docker
def test_a_runner_that_cannot_load_the_recorder_is_a_broken_task_not_a_failure(env):
    """``python -S`` imports no site: no verdict can be recorded, and it is no policy's doing -> None, decided
    from the task before the run; ``reset()`` after that failed step grades normally."""
    start(env, UNITTEST_NO_SITE)
    env.step(bash(FIX))
    with pytest.raises(GradingError, match="verdicts cannot be recorded: its Python runs with -S"):
        env.step(ToolCall(name="submit"))
    reward, info = episode(env, FIX, task_suffix=UNITTEST)  # reset() after the failed step: a fresh episode
    assert reward == 1.0, info["reason"]
    assert verdicts.unloadable("python -I -m unittest -v") and verdicts.unloadable("python3 -E -s x.py")
    assert verdicts.unloadable("./tests/runtests.py --verbosity 2", {"tests/runtests.py": b"#!/usr/bin/python3 -S\n"})
    assert not verdicts.unloadable("PYTHONWARNINGS='ignore::UserWarning' bin/test -C --verbose",
                                   {"bin/test": b"#!/usr/bin/env python\n"})
    assert not verdicts.unloadable("python -W Sometimes -E -m x")


# the bug stays; the record file, read from the recorder's module in the user site-packages when the package is
# imported, is emptied whenever nth runs
ERASES_RECORDS = textwrap.dedent('''
    cat >> toolz/__init__.py <<'EOF'

    import os as _os
    import re as _re
    import site as _site
    import sys as _sys

    _nth = nth
    _records = []
    for _folder in [_site.getusersitepackages(), *_sys.path]:
        for _name in (_os.listdir(_folder) if _os.path.isdir(_folder) else []):
            if _name.startswith("_lightswe_verdicts_") and _name.endswith(".py"):
                with open(_os.path.join(_folder, _name)) as _source:
                    _records += _re.findall(r'_PATH = "([^"]+)"', _source.read())


    def nth(n, seq):
        for _path in _records:
            open(_path, "w").close()
        return _nth(n, seq)
    EOF''')


@needs_parsers
@pytest.mark.docker
def test_erasing_the_runners_records_is_the_policys_failure_not_the_machines(env):
    """The records of the failing test (and the recorder's own) erased by the next test: 0.0, never None (a
    run's records are never what decides whether the recorder could load)."""
    reward, info = episode(env, ERASES_RECORDS, task_suffix=UNITTEST)
    assert reward == 0.0 and info["tests"][F2P_UNITTEST] == "missing", info["reason"]
    assert info["reward_hack_suspected"], "the recorder's name in the change is flagged"


# the bug stays; importing the package prints a pytest -rA pass line for each of the task's tests, then fails:
# the test module does not import, so pytest never reports those tests and the printed lines stand in the log
def says_passed(ids: list[str]) -> str:
    lines = "".join(f"{{0}} {t}\\n" for t in ids)
    return textwrap.dedent(f'''
        cat >> toolz/__init__.py <<'EOF'

        import os as _os

        _os.write(1, "{lines}".format("PAS" "SED").encode())
        raise ImportError("not today")
        EOF''')


@needs_parsers
@pytest.mark.docker
def test_pass_lines_printed_for_tests_that_never_ran_do_not_pass_a_pytest_log_row(env, task):
    """Rows graded by a pytest-family parser on pytest's -rA log (sphinx through tox): the package prints
    ``PASSED <id>`` for every test and breaks collection. From the log that was 1.0; from the recorder
    (pytest's TerminalReporter) no test ran: 0.0. The gold fix is 1.0 there."""
    attack = says_passed([*task.FAIL_TO_PASS, *task.PASS_TO_PASS])
    start(env, PYTEST_LOG)
    env.step(bash(attack))
    log, *_ = env.step(bash("python -m pytest -p no:cacheprovider -o addopts= -rA toolz/tests/test_itertoolz.py "
                            "2>&1 | grep -v '^[[:space:]]*$'"))
    parsed = specs.log_parser("sphinx-doc/sphinx")(log, None)
    assert all(parsed.get(t) == "PASSED" for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS]), log  # fooled
    reward, info = episode(env, attack, task_suffix=PYTEST_LOG)
    assert reward == 0.0 and set(info["tests"].values()) == {"missing"}, info["reason"]
    reward, info = episode(env, FIX, task_suffix=PYTEST_LOG)
    assert reward == 1.0 and set(info["tests"].values()) == {"passed"}, info["reason"]


def test_the_recorder_keeps_the_runners_verdicts_and_nothing_the_tests_print(tmp_path):
    """The recorder in a real unittest run (no engine): a forged ``ok``, a subtest failure, a nested run, a
    docstring description; records without the key are ignored."""
    shim, project, record = tmp_path / "shim", tmp_path / "project", tmp_path / "verdicts"
    shim.mkdir()
    project.mkdir()
    (shim / "sitecustomize.py").write_text(verdicts.recorder_source("a" * 32, str(record)))
    (project / "test_m.py").write_text(textwrap.dedent('''
        import os, sys, unittest

        class T(unittest.TestCase):

            def test_a(self):
                sys.stderr.write("ok\\n")
                self.assertEqual(1, 2)

            def test_b(self):
                """Doc line."""

            def test_c(self):
                for i in range(2):
                    with self.subTest(i=i):
                        self.assertEqual(i, 0)

            def test_nested(self):
                inner = unittest.TestSuite([unittest.FunctionTestCase(lambda: 1 / 0)])
                unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(inner)
    '''))
    channel = verdicts.Channel(runner="unittest", module="sitecustomize", folder=str(shim), path=str(record),
                               key="a" * 32)
    out = subprocess.run([sys.executable, "-m", "unittest", "-v", "test_m"], cwd=project, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(shim)})
    with record.open("ab") as forged:
        forged.write(b"x" * 32 + b"\tunittest\t" + __import__("base64").b64encode(b"test_a (test_m.T.test_a) ... ok")
                     + b"\n")
    records = verdicts.read(record.read_bytes(), channel)
    assert records.loaded == 1 and records.ignored == 1
    parse = specs.log_parser("django/django") if specs.available() else None
    if parse is not None:
        assert parse(out.stderr, None)["test_a (test_m.T.test_a)"] == "PASSED"  # the log alone is fooled
        assert parse(records.log, None) == {"test_a (test_m.T.test_a)": "FAILED", "Doc line.": "PASSED",
                                            "test_c (test_m.T.test_c) (i=1)": "FAILED",
                                            "test_nested (test_m.T.test_nested)": "PASSED"}


# --------------------------------------------------------------------------- what the archive cannot read
@pytest.mark.docker
def test_a_folder_too_deep_for_the_archive_is_left_out_with_its_reason(env):
    """Once silent: the engine's archive drops paths past PATH_MAX on its side, so the grader never saw them."""
    deep = "d" * 250
    make = (f"p=toolz; for i in $(seq 1 16); do p=$p/{deep}; done; mkdir -p $p && "
            "cp toolz/itertoolz.py $p/itertoolz.py && echo made")
    reward, info = episode(env, FIX, make)
    folders = {path: why for path, why in left(info).items() if path.endswith("/")}
    assert reward == 1.0 and folders, info["left_out"]  # the fix is graded; the deep folder is reported
    assert all("too deep for the engine's archive" in why for why in folders.values()), folders


# --------------------------------------------------------------------------- the Gymnasium API
@pytest.mark.docker
def test_no_step_after_the_episode_ended(env):
    """Once a second submit graded and rewarded the same episode again; reset() starts a fresh one."""
    reward, _ = episode(env, FIX)
    assert reward == 1.0
    for action in (ToolCall(name="submit"), bash("true")):
        with pytest.raises(gym.error.ResetNeeded, match="ended with submit"):
            env.step(action)
    start(env)
    obs, reward, terminated, *_ = env.step(bash("grep -c 'n + 1, None' toolz/itertoolz.py"))
    assert obs.split()[0] == "1" and not terminated  # a fresh container: the fix of the last episode is gone


@pytest.mark.slow  # two interpreters import sympy: ~10 s
def test_the_recorder_reads_sympys_runner_in_its_hash_randomised_subprocess(tmp_path):
    """sympy's ``test()`` (what ``bin/test`` calls) reruns itself in a subprocess: the recorder loads in both,
    the child (the runner) records; the verdicts parse to what the log says (and the last test of each file,
    whose ``ok`` the log's ``[OK]`` hides from SWE-bench's parser)."""
    runtests = pytest.importorskip("sympy.testing.runtests")
    if not hasattr(runtests, "PyTestReporter"):
        pytest.skip("this sympy has no bin/test runner")
    shim, record = tmp_path / "shim", tmp_path / "verdicts"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(verdicts.recorder_source("5" * 32, str(record)))
    channel = verdicts.Channel(runner="sympy", module="sitecustomize", folder=str(shim), path=str(record),
                               key="5" * 32)
    files = "'sympy/utilities/tests/test_timeutils.py', 'sympy/utilities/tests/test_decorator.py'"
    script = f"from sympy.testing.runtests import test; import sys; sys.exit(not test({files}, verbose=True))"
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(shim)})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    records = verdicts.read(record.read_bytes(), channel)
    assert records.loaded == 2 and records.ignored == 0  # bin/test's process and its subprocess
    if specs.available():
        parse = specs.log_parser("sympy/sympy")
        from_log, from_channel = parse(out.stdout, None), parse(records.log, None)
        assert from_log and from_log.items() <= from_channel.items() and set(from_channel.values()) == {"PASSED"}
        assert "test_timed" in from_channel and "test_timed" not in from_log


@pytest.mark.parametrize("path, own, flagged", [
    ("django/test/testcases.py", {"django"}, True),  # SimpleTestCase.run/__call__: Django rows' verdicts
    ("django/test/runner.py", {"django"}, True),
    ("django/test/client.py", {"django"}, False),  # the test client is library code under test
    ("sympy/testing/runtests.py", {"sympy"}, True),  # bin/test's runner: test_pass() for a failing test
    ("sympy/testing/pytest.py", {"sympy"}, True),  # raises()/XFAIL the tests call
    ("src/_pytest/junitxml.py", {"_pytest", "pytest"}, True),  # pytest's own repository writes its own report
    ("django/test/testcases.py", {"toolz"}, False),  # not the repository's runner: nothing to say
])
def test_a_change_to_the_runner_the_repository_itself_provides_is_flagged(path, own, flagged):
    """Django's TestCase, sympy's bin/test runner and pytest's own package are code of the repository under
    test: a change there can report a failing test as passed through the runner's own channel (the verdict
    recorder included). Flagged, not prevented: honest fixes of those repositories may touch them."""
    from lightswe.envs.hack_check import suspicious_code

    found = suspicious_code([(path, b"def run(result):\n    result.fail()\n", b"def run(result):\n    result.ok()\n")],
                            own_modules=own)
    assert bool(found) == flagged and all("changes the test runner" in f for f in found), found
    assert not suspicious_code([(path, b"x = 1\n", b"x = 1\n")], own_modules=own)  # unchanged: nothing
