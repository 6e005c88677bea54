"""``lightswe/SWE-v0`` on the embedded real-repository task (toolz 1.0.0 sdist with a one-line bug in nth)."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

import lightswe  # noqa: F401 - registers the ids
from lightswe.envs.demo import patch_edits, scripted_actions
from lightswe.envs.registration import ENV_IDS
from lightswe.envs.tool_calls import ToolCall, format_minimax

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def env():
    environment = gym.make("lightswe/SWE-v0")
    yield environment
    environment.close()


def call(name: str, **arguments) -> str:
    return format_minimax([ToolCall(name=name, arguments=arguments)])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes(env_id):
    from gymnasium.utils.env_checker import check_env

    environment = gym.make(env_id)
    try:
        check_env(environment.unwrapped)
    finally:
        environment.close()


def test_reward_one_with_the_fix_through_the_edit_tool(env):
    obs, info = env.reset(seed=0)
    assert "nth" in obs and info["task_id"] == "pypi__toolz-1.0.0__nth-iterator"
    task = env.unwrapped.task
    (path, first, old, new), = patch_edits(task.patch)
    obs, reward, terminated, truncated, info = env.step(call("str_replace", path=path, old_str=old, new_str=new))
    assert "Edited toolz/itertoolz.py" in obs and reward == 0.0 and not terminated
    obs, reward, terminated, truncated, info = env.step(call("submit"))
    assert (reward, terminated, truncated) == (1.0, True, False), obs
    assert set(info["tests"]) == {*task.FAIL_TO_PASS, *task.PASS_TO_PASS}
    assert set(info["tests"].values()) == {"passed"}


def test_reward_zero_without_the_fix(env):
    env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(ToolCall(name="submit"))
    assert (reward, terminated) == (0.0, True)
    assert info["tests"]["toolz/tests/test_itertoolz.py::test_nth"] == "failed"
    assert sum(outcome == "passed" for outcome in info["tests"].values()) == len(info["tests"]) - 1


def test_reset_forgets_the_previous_episode(env):
    env.reset(seed=0)
    first = env.unwrapped.sandbox.container_id
    for action in scripted_actions(env.unwrapped.task, fix=True)[:-1]:
        env.step(action)
    env.step(call("bash", command="echo junk > new_file.py"))
    env.reset(seed=0)
    assert env.unwrapped.sandbox.container_id != first  # a fresh container from the pool
    obs, *_ = env.step(call("bash", command="git status --short; grep -c 'n + 1, None' toolz/itertoolz.py"))
    assert obs.splitlines()[0] == "1"  # clean tree, bug back in place


def test_tampering_with_the_tests_does_not_earn_reward(env):
    env.reset(seed=0)
    env.step(call("bash", command="printf 'def test_nth():\\n    pass\\n' > toolz/tests/test_itertoolz.py"))
    env.step(call("create", path="toolz/tests/conftest.py",
                  content="import pytest\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
                          "    outcome = yield\n    outcome.get_result().outcome = 'passed'\n"))
    obs, reward, terminated, _, info = env.step(call("submit"))
    assert reward == 0.0 and info["tests"]["toolz/tests/test_itertoolz.py::test_nth"] == "failed"


def test_git_history_does_not_reveal_the_fix(env):
    env.reset(seed=0)
    obs, *_ = env.step(call("bash", command="git log --all --oneline | wc -l; git tag | wc -l; git remote | wc -l; "
                                            "git stash list | wc -l; git log -p --all | grep -c 'next(itertools.islice(seq, n, None))'"))
    assert obs.split()[:5] == ["1", "0", "0", "0", "0"], obs


@pytest.mark.parametrize("action, expected", [
    ("I think the bug is in nth.", "found no tool call"),
    ("<tool_calls>\n{\"name\": bash}\n</tool_calls>", "not valid JSON"),
    (call("rm_rf", path="/"), "unknown tool 'rm_rf'"),
    (call("view"), "argument 'path' is missing"),
    (call("view", path="nope.py"), "does not exist"),
    (call("bash", command="ls", cwd="/"), "unexpected argument"),
    (format_minimax([ToolCall(name="bash", arguments={"command": "ls"})] * 2), "found 2 tool calls"),
    (call("str_replace", path="toolz/itertoolz.py", old_str="return", new_str="x"), "occurs"),
    (call("str_replace", path="toolz/itertoolz.py", old_str="no such text", new_str="x"), "not found"),
    (call("create", path="setup.py", content="x"), "already exists"),
], ids=["prose", "bad-json", "unknown-tool", "missing-arg", "missing-file", "extra-arg", "two-calls",
        "ambiguous-edit", "edit-not-found", "create-existing"])
def test_malformed_actions_explain_and_do_not_end_the_episode(env, action, expected):
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert expected in obs and reward == 0.0 and not terminated and not truncated
    assert env.observation_space.contains(obs)


def test_observations_stay_in_the_space(env):
    env.reset(seed=0)
    obs, *_ = env.step(call("bash", command="printf '\\xff\\x01\\x1b[31mred\\xf0\\x9f\\x98\\x80 ok'; yes | head -c 100000"))
    assert env.observation_space.contains(obs) and "red" in obs and "\ufffd" in obs
    assert "output truncated" in obs


def test_view_and_search(env):
    env.reset(seed=0)
    obs, *_ = env.step(call("view", path="toolz/itertoolz.py", start_line=389, end_line=391))
    assert obs.splitlines()[0].split("\t") == ["   389", "def nth(n, seq):"] and "lines 389-391 of" in obs
    obs, *_ = env.step(call("search", pattern="def nth", path="toolz"))
    assert obs == "toolz/itertoolz.py:389:def nth(n, seq):"
    obs, *_ = env.step(call("view", path="toolz"))
    assert "itertoolz.py" in obs.splitlines() and "tests/test_itertoolz.py" in obs.splitlines()


def test_truncation_by_time_limit_and_close_removes_the_container():
    import docker

    environment = gym.make("lightswe/SWE-v0", max_episode_steps=2)
    try:
        environment.reset(seed=0)
        container_id = environment.unwrapped.sandbox.container_id
        assert environment.step(call("bash", command="true"))[3] is False
        assert environment.step(call("bash", command="true"))[3] is True
    finally:
        environment.close()
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(container_id)


def test_demo_task_file_is_valid():
    from lightswe.envs.swe_env import default_tasks_path

    record = json.loads(default_tasks_path().read_text().splitlines()[0])
    assert record["FAIL_TO_PASS"] == ["toolz/tests/test_itertoolz.py::test_nth"]
    assert len(record["PASS_TO_PASS"]) > 100 and record["source"] == "pypi:toolz==1.0.0"
