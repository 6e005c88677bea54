"""Vectorised ``lightswe/SWE-v0`` (Gymnasium's ``AsyncVectorEnv`` / ``make_vec``), ``render_mode="ansi"`` and
spaces whose ``repr`` fits on a line.

``AsyncVectorEnv`` shares observations through shared memory by default; with Gymnasium's ``Text`` that gave
strings of tabs. The first test shows it on a two-line env with both space classes, the docker tests run the
real environment in two worker processes against the real engine.
"""

from __future__ import annotations

import copy
import pickle
import re

import docker
import gymnasium as gym
import lightswe  # noqa: F401 - registers the ids
import pytest
from gymnasium.spaces import Text
from lightswe.envs.spaces import SharedTexts, UnicodeText
from lightswe.envs.swe_env import CHARSET, SWEEnv
from lightswe.envs.tool_calls import ToolCall, format_minimax

SAMPLES = ("plain ascii", "héllo\twörld ✓ 日本語 \ufffd", "", "x" * 64)


class Echo(gym.Env):
    """Observations are fixed strings, then the action echoed: what comes back must equal what was sent."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.observation_space = UnicodeText(64, min_length=0, charset=CHARSET, description="test")
        self.action_space = UnicodeText(64, min_length=0, charset=CHARSET, description="test")

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return SAMPLES[self.index], {}

    def step(self, action):
        return action, 0.0, False, False, {}


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared-memory", "pipes"])
def test_async_vector_env_carries_text_exactly(shared_memory):
    envs = gym.vector.AsyncVectorEnv([lambda i=i: Echo(i) for i in range(len(SAMPLES))], shared_memory=shared_memory)
    try:
        observations, _ = envs.reset(seed=0)
        assert tuple(observations) == SAMPLES
        actions = tuple(reversed(SAMPLES))
        observations, *_ = envs.step(actions)
        assert tuple(observations) == actions
    finally:
        envs.close()


def test_shared_texts_copy_and_pickle_to_plain_tuples():
    space = UnicodeText(16, min_length=0, charset=CHARSET)
    from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory

    buffer = create_shared_memory(space, n=2)
    view = read_from_shared_memory(space, buffer, n=2)
    write_to_shared_memory(space, 1, "ünï", buffer)
    assert isinstance(view, SharedTexts) and tuple(view) == ("", "ünï") and view[1:] == ("ünï",)
    frozen = copy.deepcopy(view)
    write_to_shared_memory(space, 1, "changed", buffer)
    assert frozen == ("", "ünï") and type(frozen) is tuple and view[1] == "changed"
    assert pickle.loads(pickle.dumps(view)) == ("", "changed")
    with pytest.raises(ValueError, match="does not fit"):
        write_to_shared_memory(space, 0, "y" * 17, buffer)


def test_gymnasium_text_is_what_was_broken():
    """The reason for UnicodeText: plain Text comes back as the buffer's initial zeros (tabs)."""
    class Plain(Echo):
        def __init__(self, index):
            super().__init__(index)
            self.observation_space = Text(64, min_length=0, charset=CHARSET)

    envs = gym.vector.AsyncVectorEnv([lambda: Plain(0)] * 2)
    try:
        observations, _ = envs.reset(seed=0)
    finally:
        envs.close()
    assert observations[0] != SAMPLES[0]  # if Gymnasium fixes it, UnicodeText's shared-memory part can go


def test_spaces_print_short():
    env = SWEEnv()  # no sandbox until reset
    for space in (env.observation_space, env.action_space):
        text = repr(space)
        assert len(text) < 200 and text.startswith("UnicodeText(0, ") and "Basic Multilingual Plane" in text, text
        assert space.contains("def f():\n\treturn 'ünï'")


@pytest.mark.parametrize("mode", ["human", "rgb_array", "text"])
def test_unsupported_render_modes_say_which_exist(mode):
    with pytest.raises(ValueError, match=r"render_mode must be one of \['ansi'\]"):
        gym.make("lightswe/SWE-v0", render_mode=mode)


def test_bad_arguments_are_user_input_errors_naming_the_fix():
    from lightswe.errors import UserInputError

    with pytest.raises(UserInputError, match=r"tool_format must be one of \['hermes', 'minimax'\], got 'hermess'"):
        gym.make("lightswe/SWE-v0", tool_format="hermess")
    with pytest.raises(UserInputError, match="fix: render_mode='ansi'"):
        gym.make("lightswe/SWE-v0", render_mode="human")
    env = SWEEnv(tasks="pool:test[0:3]")  # an id that is not in the env's tasks fails before any container starts
    with pytest.raises(UserInputError, match=r"unknown task_id 'nosuch'; this env has 3 tasks; fix: .*"
                                             + re.escape(env.tasks[0].instance_id)):
        env.reset(options={"task_id": "nosuch"})
    assert env.sandbox is None
    env.close()


def bash(command: str) -> str:
    return format_minimax([ToolCall(name="bash", arguments={"command": command})])


def containers_alive(prefixes: list[str]) -> list[str]:
    ids = [c["Id"] for c in docker.from_env().api.containers(all=True, filters={"label": "lightswe.sandbox=1"})]
    return [i for i in ids if any(i.startswith(p) for p in prefixes)]


def sandbox_of(rendered: str) -> str:
    return rendered.split("sandbox ", 1)[1].split()[0]


@pytest.mark.docker
@pytest.mark.parametrize("how", ["make_vec", "AsyncVectorEnv"])
def test_two_real_envs_in_worker_processes(how):
    if how == "make_vec":
        envs = gym.make_vec("lightswe/SWE-v0", num_envs=2, vectorization_mode="async", render_mode="ansi")
    else:
        envs = gym.vector.AsyncVectorEnv([lambda: gym.make("lightswe/SWE-v0", render_mode="ansi")] * 2)
    try:
        assert repr(envs.single_observation_space).startswith("UnicodeText(")
        observations, infos = envs.reset(seed=0)
        statement = SWEEnv()._statement(SWEEnv().tasks[0])
        assert tuple(observations) == (statement, statement)
        observations, rewards, terminated, truncated, _ = envs.step((bash("echo $((6*7))"), bash("id -un")))
        assert [o.split("\n")[0] for o in observations] == ["42", "agent"] and not any(terminated)
        rendered = envs.call("render")
        boxes = [sandbox_of(text) for text in rendered]
        assert len(set(boxes)) == 2 and len(containers_alive(boxes)) == 2
    finally:
        envs.close()
    assert containers_alive(boxes) == []


@pytest.mark.docker
def test_render_ansi_shows_the_agents_changes():
    env = gym.make("lightswe/SWE-v0", render_mode="ansi")
    try:
        assert env.unwrapped.render() == "lightswe/SWE-v0: not reset yet (call reset())"
        env.reset(seed=0)
        first = env.render()
        assert first.startswith("task pypi__toolz-1.0.0__nth-iterator (pypi/toolz); sandbox ")
        assert first.endswith("(no changes yet)")
        env.step(bash("echo '# touched' >> toolz/itertoolz.py && echo new > notes.txt"))
        text = env.render()
        assert "?? notes.txt" in text and "+# touched" in text and "M toolz/itertoolz.py" in text
        env.step(ToolCall(name="submit"))
        assert "submitted: reward 0.0" in env.render()
    finally:
        env.close()
