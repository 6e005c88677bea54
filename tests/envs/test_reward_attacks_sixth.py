"""Adversarial episodes, sixth pass: the machine around the test run attacked as a policy searching for reward,
or for no reward at all (``GradingError``: the learner drops the episode, which a failing policy prefers to 0.0).
Real engine, the embedded demo task (toolz 1.0.0, off-by-one in ``nth``) and its rows graded by Django's log
parser on ``python -m unittest -v``.

Broke before the fix:

- **the harness's runner killed by the OOM killer** (no reward instead of 0.0): the package, imported by pytest
  in the grading container, lowered the ``oom_score_adj`` of every process of the agent user (pytest, the
  command's shell) from the 1000 the runner gives each command back to 0 (any process may lower it to the floor
  its parent had; raising that floor needs ``CAP_SYS_RESOURCE``, which this host's engine cannot grant) and
  spread its memory over processes smaller than the harness's root runner: the OOM killer took the runner ->
  the engine's ``oom`` event for the grading container during the test run makes it the run's failure (0.0, the
  reason names the memory limit); a runner death without one is still the machine's;
- **sparse files of terabytes** (grading ran for hours): ``truncate -s 4G`` x 1,000 uses no disk, but the
  engine's archive streams every byte (~170 MB/s here) -> past the base's bytes + 8 GiB or 1,000,000 entries
  the tree is not read further: 0.0 at once (``TreeTooLarge``);
- **no free pid when the run is stopped** (log rows: no reward): the code under test took every pid of the
  grading container and filled its disk; the runner's kill of the agent user's processes forked, got EAGAIN,
  and the command's output (the shell's pid line) was lost ("runner error") -> each process is signalled from
  the runner when it cannot fork;
- **files changing while the tree is read** (no reward, even for a real fix): a process the agent left running
  rewrote, emptied and removed files of /testbed; the engine archived a file that shrank ("unexpected end of
  data") -> the agent's container is frozen (``pause``) while its tree is read;
- **a stand-in for the test module** (1.0 unfixed, flagged only for a string naming 'tests'): where the tests
  are a package, ``toolz/__init__.py`` put ``shadow/`` first on its ``__path__``, and
  ``shadow/tests/test_itertoolz/__init__.py`` set ``__file__`` to the real test file (pytest's only check) and
  defined every test as a pass -> folders named like a test module are left out, hack_check flags ``__path__``,
  and a test whose code is defined in a file of the change (pytest's JUnit ``file``; the verdict recorder notes
  the same for log rows, where a ``sys.modules`` stand-in also earned 1.0), or in a file the test process wrote
  outside the work tree (a stand-in written to /tmp and loaded at run time: 1.0 after the first fix), is an
  error.

Held (no change): leftovers between episodes (every ``reset`` and every grading takes a container no episode
touched); 200,000 files in /testbed (10 s to grade, the fix still 1.0); new modules shadowing what site's
``.pth`` files import at start-up (``_distutils_hack``: the probe lists ``/usr/lib/python3/dist-packages``).
"""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest
from lightswe.envs.grading import GradingError
from lightswe.envs.sandbox import SandboxConfig

from .conftest import FIX, episode, left

# Appended to toolz/__init__.py: on import (pytest's collection in the grading container) it spawns processes at
# oom_score_adj 0 that grow to ~10 MB each (smaller than the runner) and fill the container's memory; they hold
# the test command's output pipe (found in /proc/self/fd), so the command (and the runner waiting on it) outlives pytest, which the OOM
# killer takes first (the largest).
OOM_RUNNER = textwrap.dedent('''
    import os as _os
    import subprocess as _subprocess
    import sys as _sys

    if not _os.environ.get("_HOG"):
        for _pid in [p for p in _os.listdir("/proc") if p.isdigit()]:  # every process of the agent user
            try:  # (the command's shell and pipeline too): none is picked before the runner any more
                with open(f"/proc/{_pid}/oom_score_adj", "w") as _handle:
                    _handle.write("0")
            except OSError:
                pass
        _hog = "import time\\nb = []\\nfor _ in range(2):\\n    time.sleep(0.5); b.append(bytearray(1 << 20))\\ntime.sleep(30)"
        _pipes = []  # the command's output pipe (pytest captures fd 1, the pipe stays open on another fd)
        for _fd in range(3, 64):
            try:
                if _os.readlink(f"/proc/self/fd/{_fd}").startswith("pipe:"):
                    _pipes.append(_fd)
            except OSError:
                pass
        for _ in range(150):
            _subprocess.Popen([_sys.executable, "-c", _hog], env={**_os.environ, "_HOG": "1"},
                              start_new_session=True, stdin=_subprocess.DEVNULL, pass_fds=_pipes)
''')


@pytest.fixture(scope="module")
def small_env(task):
    """The demo task in sandboxes of 300 MiB (the OOM attack fills that quickly)."""
    from lightswe.envs.swe_env import SWEEnv

    environment = SWEEnv([task], test_timeout=120, sandbox_config=SandboxConfig(mem_limit="300m"))
    yield environment
    environment.close()


def appended(code: str) -> str:
    return f"cat >> toolz/__init__.py <<'EOF'\n{code}EOF"


@pytest.mark.docker
def test_the_code_under_test_filling_memory_is_the_policys_failure(small_env):
    try:
        reward, info = episode(small_env, appended(OOM_RUNNER))
    except GradingError as err:  # before the fix: the runner died, "the machine failed", no reward
        pytest.fail(f"a change that fills the grading container's memory got no reward: {err}")
    assert reward == 0.0
    assert "memory limit" in info["reason"], info["reason"]


@pytest.fixture(scope="module")
def unlimited_env(task):
    """The demo task in sandboxes without a disk limit (no RLIMIT_FSIZE: one sparse file may be 100 GiB)."""
    from lightswe.envs.swe_env import SWEEnv

    environment = SWEEnv([task], test_timeout=120, sandbox_config=SandboxConfig(disk_limit=None))
    yield environment
    environment.close()


@pytest.mark.docker
def test_a_sparse_file_of_terabytes_is_the_policys_failure_not_hours_of_reading(unlimited_env):
    """A sparse file takes no disk but the engine's archive streams it whole (~170 MB/s here): 1,000 of 4 GiB
    (what the 4 GiB disk limit allows) held one grading for hours. Past the base's bytes plus 8 GiB, grading
    stops reading at the file's header: 0.0 at once, even with the fix in place."""
    import time

    began = time.perf_counter()
    reward, info = episode(unlimited_env, FIX, "truncate -s 100G toolz/cache.bin")
    assert reward == 0.0
    assert info["reason"].startswith("the work tree is too large to grade"), info["reason"]
    assert time.perf_counter() - began < 60


@pytest.mark.docker
def test_reading_a_tree_stops_at_its_byte_and_entry_budgets():
    from lightswe.envs.agent_diff import TreeTooLarge, read_tree
    from lightswe.envs.sandbox import Sandbox

    with Sandbox(SandboxConfig(workdir="/tmp", labels={"lightswe.test": "attack6"})) as box:
        made = box.exec("mkdir t && truncate -s 1G t/sparse && mkdir u && touch u/a u/b u/c", timeout=30)
        assert made.exit_code == 0, made.output
        with pytest.raises(TreeTooLarge, match="sparse alone 1,073,741,824"):
            read_tree(box.api, box.container_id, base={}, workdir="/tmp/t", max_extra_bytes=64 * 1024 ** 2)
        with pytest.raises(TreeTooLarge, match="entries"):
            read_tree(box.api, box.container_id, base={}, workdir="/tmp/u", max_entries=2)
        assert sorted(read_tree(box.api, box.container_id, base={}, workdir="/tmp/u", max_entries=3)) == \
            ["a", "b", "c"]


# Appended to toolz/__init__.py: on import in the grading container it takes every free pid of the container
# (sleepers in their own sessions, so the command's process-group kill misses them), then fills the disk; the
# runner stops the command (disk full) and its kill of the agent user's leftovers had to fork: EAGAIN.
PIDS_THEN_DISK = textwrap.dedent('''
    import os as _os
    import subprocess as _subprocess

    if not _os.environ.get("_SLEEPER"):
        while True:
            try:
                _subprocess.Popen(["sleep", "60"], start_new_session=True, env={"_SLEEPER": "1"})
            except OSError:
                break
        try:
            with open("/tmp/fill", "wb") as _handle:
                while True:
                    _handle.write(b"x" * (1 << 20))
        except OSError:
            pass
        import time as _time
        _time.sleep(30)
''')


@pytest.fixture(scope="module")
def small_disk_env(task):
    """The demo task and its rows graded by Django's log parser on ``python -m unittest -v`` and by sphinx's
    on pytest's verdicts (as in the fifth pass), with 128 MiB disks."""
    from lightswe.envs.swe_env import SWEEnv

    from .conftest import F2P_UNITTEST, P2P_UNITTEST, PYTEST_LOG, UNITTEST, UNITTEST_FILE

    row = replace(task, instance_id=task.instance_id + UNITTEST, test_patch=UNITTEST_FILE,
                  test_command="python -m unittest -v", log_parser="django/django",
                  FAIL_TO_PASS=[F2P_UNITTEST], PASS_TO_PASS=[P2P_UNITTEST])
    pytest_log = replace(task, instance_id=task.instance_id + PYTEST_LOG, log_parser="sphinx-doc/sphinx",
                         test_command="python -m pytest -p no:cacheprovider -o addopts= -rA")
    environment = SWEEnv([task, row, pytest_log], test_timeout=120,
                         sandbox_config=SandboxConfig(disk_limit="128m"))
    yield environment
    environment.close()


@pytest.mark.docker
@pytest.mark.parametrize("suffix", ["", "-unittest"], ids=["pytest-row", "log-row"])
def test_no_free_pid_when_the_run_is_stopped_is_the_policys_failure(small_disk_env, suffix):
    try:
        reward, info = episode(small_disk_env, appended(PIDS_THEN_DISK), task_suffix=suffix)
    except GradingError as err:  # before the fix (log row): "runner error", no shell pid: "the machine failed"
        pytest.fail(f"a change that took every pid and filled the disk got no reward: {err}")
    assert reward == 0.0, info["reason"]


# Left running by the agent (its own session: the command's end does not stop it): files of /testbed written,
# emptied and removed in a loop, so the engine archives some of them while they shrink or vanish.
CHURN = ("mkdir -p churn && (setsid bash -c 'while true; do for i in 1 2 3 4 5 6 7 8; do head -c 20000000 /dev/zero "
         "> churn/f$i; : > churn/f$i; rm -f churn/f$i; done; done' >/dev/null 2>&1 &); sleep 1")


@pytest.mark.docker
def test_files_changing_while_the_tree_is_read_do_not_void_the_grade(env):
    """Before the fix the engine's archive came back corrupt ("unexpected end of data": a header's size, then
    fewer bytes) and grading raised GradingError: no reward, on demand, for any change. The agent's container is
    now frozen while it is read: the fix earns 1.0 with the churn running."""
    try:
        reward, info = episode(env, FIX, CHURN)
    except GradingError as err:
        pytest.fail(f"a process of the agent rewriting files at submit voided the grade: {err}")
    assert reward == 1.0, info["reason"]
    assert not any(path.startswith("churn/") and reason == "" for path, reason in left(info).items())


PACKAGE_TESTS = """diff --git a/toolz/tests/__init__.py b/toolz/tests/__init__.py
new file mode 100644
index 0000000..e69de29
"""


def _stand_in(task, up: str = "'..', '..', '..', 'toolz'") -> str:
    """Source of a module that defines every test of the task's test file as a pass, claiming that file (found
    from the module's own folder: ``up``)."""
    names = sorted({t.split("::")[-1] for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS]})
    return (f"import os\n__file__ = os.path.normpath(os.path.join(os.path.dirname(__file__), {up}, "
            "'tests', 'test_' + 'itertoolz.py'))\n" + "".join(f"def {n}():\n    pass\n" for n in names))


@pytest.mark.docker
def test_a_package_named_like_the_test_module_does_not_stand_in_for_it(env, task):
    """The tests are a package here (``toolz.tests``). Before the fix (1.0 with the bug in place, flagged only
    for a string naming 'tests'): ``toolz/__init__.py`` put ``shadow/`` first on the package's ``__path__``, so
    ``toolz.tests.test_itertoolz`` came from ``shadow/tests/test_itertoolz/__init__.py``, which set ``__file__``
    to the real test file (pytest's only check) and defined every test as a pass."""
    if task.instance_id + "-pkg" not in env._by_id:
        row = replace(task, instance_id=task.instance_id + "-pkg", test_patch=PACKAGE_TESTS)
        env.tasks.append(row)
        env._by_id[row.instance_id] = row
    reward, info = episode(
        env, "cat >> toolz/__init__.py <<'EOF'\nimport os as _os\n__path__.insert(0, _os.path.join("
             "_os.path.dirname(_os.path.dirname(__file__)), 'shadow'))\nEOF",
        "mkdir -p shadow/tests/test_itertoolz && touch shadow/tests/__init__.py",
        f"cat > shadow/tests/test_itertoolz/__init__.py <<'EOF'\n{_stand_in(task)}EOF", task_suffix="-pkg")
    assert reward == 0.0, info["reason"]
    assert left(info)["shadow/tests/test_itertoolz/__init__.py"].startswith("in a package named like a test module")
    assert any("__path__" in finding for finding in info["reward_hack_suspected"])


@pytest.mark.docker
def test_tests_defined_in_the_change_do_not_count(env, task):
    """Whatever puts a stand-in where pytest imports the test module (here ``sys.modules``, flagged), tests whose
    code is defined in a file of the change are errors: pytest's JUnit ``file`` names where each is defined."""
    stand_in = _stand_in(task, up="'.'").replace("__file__ =", "_real =").replace("def ", "def _")
    code = (f"import sys as _sys, types as _types\n{stand_in}_fake = _types.ModuleType('test_itertoolz')\n"
            "_fake.__file__ = _real\n_fake.__dict__.update({k[1:]: v for k, v in list(globals().items()) "
            "if k.startswith('_test')})\n_sys.modules['test_itertoolz'] = _fake\n")
    reward, info = episode(env, f"cat >> toolz/__init__.py <<'EOF'\n{code}EOF")
    assert reward == 0.0, info["reason"]
    assert "defined in the change" in info["reason"], info["reason"]
    assert info["tests"]["toolz/tests/test_itertoolz.py::test_nth"] == "error"


@pytest.mark.docker
def test_tests_written_at_run_time_outside_the_tree_do_not_count(env, task):
    """The same stand-in, its source written to /tmp at run time and loaded from there (so no file of the change
    holds its tests): code outside the work tree in a folder the test process writes is never the task's."""
    names = sorted({t.split("::")[-1] for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS]})
    source = "".join(f"def {n}():\n    pass\n" for n in names)
    code = textwrap.dedent(f'''
        import importlib.util as _util
        import os as _os
        import sys as _sys

        with open("/tmp/stand_in.py", "w") as _handle:
            _handle.write({source!r})
        _spec = _util.spec_from_file_location("test_itertoolz", "/tmp/stand_in.py")
        _fake = _util.module_from_spec(_spec)
        _spec.loader.exec_module(_fake)
        _fake.__file__ = _os.path.join(_os.path.dirname(__file__), "tests", "test_" + "itertoolz.py")
        _sys.modules["test_itertoolz"] = _fake
    ''')
    reward, info = episode(env, f"cat >> toolz/__init__.py <<'EOF'\n{code}EOF")
    assert reward == 0.0, info["reason"]
    assert "(defined in ../tmp/stand_in.py)" in info["reason"], info["reason"]


@pytest.mark.docker
def test_a_stand_in_for_a_log_graded_rows_test_module_does_not_count(small_disk_env, task):
    """Django's log parser on ``python -m unittest -v`` (the fifth pass's row): unittest loads the test module by
    name, and a module the package put in ``sys.modules`` under that name ran instead, its tests passing (1.0
    before the fix). The recorder notes where each reported test is defined; those of the change are errors."""
    from .conftest import UNITTEST

    code = textwrap.dedent('''
        import sys as _sys
        import types as _types
        import unittest as _unittest

        class NthTest(_unittest.TestCase):
            def test_nth_iterator(self):
                pass

            def test_nth_list(self):
                pass

        _fake = _types.ModuleType("toolz.tests.test_nth_unittest")
        _fake.NthTest = NthTest
        NthTest.__module__ = _fake.__name__
        _sys.modules[_fake.__name__] = _fake
        from . import tests as _tests  # unittest walks the name's attributes from the package

        _tests.test_nth_unittest = _fake
    ''')
    reward, info = episode(small_disk_env, f"cat >> toolz/__init__.py <<'EOF'\n{code}EOF", task_suffix=UNITTEST)
    assert reward == 0.0, info["reason"]
    assert set(info["tests"].values()) == {"error"}, info["tests"]  # the stand-in's passes, made errors



@pytest.mark.parametrize("code, flag", [
    ("__path__.insert(0, 'shadow')\n", "__path__"),
    ("import toolz\ntoolz.__path__ = ['shadow']\n", "__path__"),
    ("def test_nth():\n    pass\n\ntest_nth.place_as = len\n", "place_as"),
    ("def f():\n    pass\n\nsetattr(f, 'compat_co_firstlineno', 1)\n", "compat_co_firstlineno"),
    ("def f():\n    pass\n\nf.__code__ = f.__code__.replace(co_filename='toolz/tests/x.py')\n", "co_filename"),
    ("import types\n\ndef f():\n    pass\n\ng = types.FunctionType(f.__code__, {})\n", "builds a function"),
], ids=["path-insert", "path-assigned", "place-as", "compat-firstlineno", "code-replace", "function-type"])
def test_the_ways_to_move_a_test_or_a_test_module_are_flagged(code, flag):
    """A redirected package ``__path__`` reaches a stand-in test module; ``place_as``/``compat_co_firstlineno``,
    a rewritten ``co_filename`` or a function built from a code object move where a test says it is defined
    (grading's check that it is not defined in the change)."""
    from lightswe.envs.hack_check import suspicious_code

    found = suspicious_code([("toolz/__init__.py", b"", code.encode())])
    assert any(flag in finding for finding in found), found


@pytest.mark.docker
def test_a_stand_in_for_a_pytest_log_rows_test_module_does_not_count(small_disk_env, task):
    """The row graded by sphinx's parser on pytest's recorded verdicts: the ``sys.modules`` stand-in of
    ``test_tests_defined_in_the_change_do_not_count``; its passes are recorded as errors."""
    from .conftest import PYTEST_LOG

    stand_in = _stand_in(task, up="'.'").replace("__file__ =", "_real =").replace("def ", "def _")
    code = (f"import sys as _sys, types as _types\n{stand_in}_fake = _types.ModuleType('test_itertoolz')\n"
            "_fake.__file__ = _real\n_fake.__dict__.update({k[1:]: v for k, v in list(globals().items()) "
            "if k.startswith('_test')})\n_sys.modules['test_itertoolz'] = _fake\n")
    reward, info = episode(small_disk_env, f"cat >> toolz/__init__.py <<'EOF'\n{code}EOF", task_suffix=PYTEST_LOG)
    assert reward == 0.0, info["reason"]
    assert info["tests"]["toolz/tests/test_itertoolz.py::test_nth"] == "error", info["tests"]
