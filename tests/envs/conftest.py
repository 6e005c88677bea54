"""Shared set-up of the adversarial episode tests (``test_reward_hacking.py``, ``test_reward_attacks.py``) and
the container checks of ``test_sandbox.py`` / ``test_pristine.py``.

The embedded demo task (toolz 1.0.0, off-by-one in ``nth``) is graded on ``test_itertoolz.py`` only (same image,
fewer tests, so an episode grades in a second or two). One env per test module holds it and two variants that
share its image: ``NO_ADDOPTS`` (a test command that does not override ``addopts``, as synthesized tasks may
have) and ``TWO_FILES`` (FAIL_TO_PASS tests in two files, ``test_curried.py`` collected first). Every
:func:`episode` starts in a new container. Test modules import the constants and helpers with
``from .conftest import ...``; the fixtures (``task``, ``env``) reach them through pytest.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest
from lightswe.envs.swe_env import SWEEnv, default_tasks_path
from lightswe.envs.tool_calls import ToolCall
from lightswe.tasks.instance import TaskInstance, read_jsonl

F2P = "toolz/tests/test_itertoolz.py::test_nth"
TEST_FILE = "toolz/tests/test_itertoolz.py"
FIX = "sed -i 's/islice(seq, n + 1, None)/islice(seq, n, None)/' toolz/itertoolz.py"
# a pytest plugin (conftest or module) that turns every report into a pass
PASSING_HOOK = textwrap.dedent('''
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        report = outcome.get_result()
        report.outcome, report.longrepr = "passed", None
''')
NO_ADDOPTS = "-keeps-addopts"  # task id suffix of the variant whose test command keeps addopts
TWO_FILES = "-two-files"  # task id suffix of the variant whose FAIL_TO_PASS tests are in two files


def demo_task() -> TaskInstance:
    """The demo task with PASS_TO_PASS cut to ``TEST_FILE``."""
    demo = read_jsonl(default_tasks_path())[0]
    return replace(demo, PASS_TO_PASS=[t for t in demo.PASS_TO_PASS if t.startswith(TEST_FILE)])


@pytest.fixture(scope="module")
def task() -> TaskInstance:
    return demo_task()


@pytest.fixture(scope="module")
def env(task):
    """An env of the demo task and its two variants (one image); closed after the module."""
    variant = replace(task, instance_id=task.instance_id + NO_ADDOPTS, test_command="python -m pytest -p no:cacheprovider")
    two_files = replace(task, instance_id=task.instance_id + TWO_FILES,
                        FAIL_TO_PASS=["toolz/tests/test_curried.py::test_merge", *task.FAIL_TO_PASS])
    environment = SWEEnv([task, variant, two_files], test_timeout=120)
    yield environment
    environment.close()


def bash(command: str) -> ToolCall:
    return ToolCall(name="bash", arguments={"command": command})


def start(env: SWEEnv, task_suffix: str = "") -> None:
    """A new container of the demo task (or the variant named by ``task_suffix``)."""
    env.reset(options={"task_id": env.tasks[0].instance_id + task_suffix})


def episode(env: SWEEnv, *commands: str, task_suffix: str = "", hack_policy: str = "keep", fooled: bool = False):
    """A new container, the agent's bash commands, submit; returns (reward, info).

    ``fooled``: first check that the attack is real: the agent's own pytest passes the FAIL_TO_PASS test although
    the bug is still in place.
    """
    start(env, task_suffix)
    for command in commands:
        obs, _, _, _, info = env.step(bash(command))
        assert "error" not in info, obs
    if fooled:
        obs, *_ = env.step(bash(f"python -m pytest -q {F2P} >/dev/null 2>&1; echo exit=$?; grep -c 'n + 1, None' "
                                "toolz/itertoolz.py"))
        assert obs.split()[:2] == ["exit=0", "1"], f"the attack does not fool pytest in the agent's container: {obs}"
    env.hack_policy = hack_policy
    try:
        _, reward, terminated, _, info = env.step(ToolCall(name="submit"))
    finally:
        env.hack_policy = "keep"
    assert terminated
    return reward, info


def left(info) -> dict[str, str]:
    """The files a grade left out of the graded diff, with the reason."""
    return {x.path: x.reason for x in info["left_out"]}


def container_exists(container_id: str) -> bool:
    import docker

    try:
        docker.from_env().containers.get(container_id)
    except docker.errors.NotFound:
        return False
    return True


# Rows graded by a SWE-bench log parser on the demo task (tests/envs/test_reward_attacks_fourth.py, _fifth.py):
# the task-id suffixes and the unittest module their test_patch adds.
UNITTEST = "-unittest"  # graded by Django's log parser on `python -m unittest -v` (the runner runtests.py uses)
PYTEST_LOG = "-pytest-log"  # graded by sphinx's parser (pytest -rA) on pytest's verdicts, as sphinx's tox rows are
UNITTEST_FILE = """diff --git a/toolz/tests/test_nth_unittest.py b/toolz/tests/test_nth_unittest.py
new file mode 100644
--- /dev/null
+++ b/toolz/tests/test_nth_unittest.py
@@ -0,0 +1,11 @@
+import unittest
+
+from toolz import nth
+
+
+class NthTest(unittest.TestCase):
+    def test_nth_iterator(self):
+        self.assertEqual(nth(2, iter("ABCDE")), "C")
+
+    def test_nth_list(self):
+        self.assertEqual(nth(2, "ABCDE"), "C")
"""
F2P_UNITTEST = "test_nth_iterator (toolz.tests.test_nth_unittest.NthTest.test_nth_iterator)"
P2P_UNITTEST = "test_nth_list (toolz.tests.test_nth_unittest.NthTest.test_nth_list)"
