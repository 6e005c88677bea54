"""The loop never raises for the machine: every InfrastructureError is a ``sandbox_error`` episode (reward None).

Real failures only: an image the engine does not have, a task source that cannot be fetched, a model server
that does not answer. Also: values JSON allows and Python chokes on reach the env through model text and come
back as observations, never as an exception or a fake runner death.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from lightswe.agent.chat import IM_END
from lightswe.agent.loop import AgentConfig, run_episode
from lightswe.agent.policies.openai_server import OpenAIPolicy
from lightswe.agent.policies.scripted import ScriptedPolicy
from lightswe.agent.trajectory import EpisodeStatus
from lightswe.envs.engine import BASE_IMAGE
from lightswe.envs.swe_env import SWEEnv, default_tasks_path
from lightswe.errors import InfrastructureError, LightSWEError
from lightswe.model import ByteTokenizer
from lightswe.tasks.instance import read_jsonl

pytestmark = pytest.mark.docker
TOK = ByteTokenizer()
TASK = read_jsonl(default_tasks_path())[0]


class TextPolicy:
    """Replays fixed model texts, one per turn (the tokens a model would sample for them)."""

    name = "text"

    def __init__(self, texts: list[str]) -> None:
        self.texts, self.turn = texts, 0

    def generate(self, token_ids, sampling):
        text = self.texts[min(self.turn, len(self.texts) - 1)]
        self.turn += 1
        tokens = [*TOK.encode(text), TOK.token_id(IM_END)]
        return tokens, [-1.0] * len(tokens)  # not near-certain: no repetition early stop


def _episode(env, policy, **config):
    try:
        return run_episode(env, policy, TOK, task_id=TASK.instance_id, config=AgentConfig(**config))
    finally:
        env.close()


def test_every_error_of_the_package_is_in_the_family():
    from lightswe.agent.policies.openai_server import ServerError
    from lightswe.envs.engine import EngineError
    from lightswe.envs.sandbox import SandboxError
    from lightswe.envs.tool_calls import ToolCallFormatError
    from lightswe.envs.tools import ToolError
    from lightswe.errors import ActionError, UserInputError
    from lightswe.tasks.images import ImageBuildError
    from lightswe.tasks.sources import SourceError
    from lightswe.tasks.synth import SuiteError

    for error in (ServerError, EngineError, SandboxError, ImageBuildError, SourceError):
        assert issubclass(error, InfrastructureError)
    assert issubclass(SuiteError, UserInputError) and issubclass(ToolError, ActionError)
    assert issubclass(ToolCallFormatError, ActionError) and issubclass(ActionError, LightSWEError)


def test_missing_image_is_a_sandbox_error_not_an_exception():
    env = SWEEnv([TASK], image_for=lambda task: "lightswe/no-such-image:never-built")
    trajectory = _episode(env, ScriptedPolicy.from_tasks([TASK], TOK))
    assert trajectory.status is EpisodeStatus.SANDBOX_ERROR and trajectory.reward is None
    assert "SandboxError" in trajectory.error and "no-such-image" in trajectory.error


def test_unfetchable_task_source_is_a_sandbox_error(tmp_path):
    task = dataclasses.replace(TASK, source=str(tmp_path / "no-such-repository"), metadata={})
    trajectory = _episode(SWEEnv([task]), ScriptedPolicy.from_tasks([task], TOK))
    assert trajectory.status is EpisodeStatus.SANDBOX_ERROR and trajectory.reward is None
    assert "SourceError" in trajectory.error and "no-such-repository" in trajectory.error


def test_model_server_that_does_not_answer_is_a_sandbox_error():
    env = SWEEnv([TASK], image_for=lambda task: BASE_IMAGE)
    trajectory = _episode(env, OpenAIPolicy("http://127.0.0.1:9", retries=0, timeout_s=5))
    assert trajectory.status is EpisodeStatus.SANDBOX_ERROR and trajectory.reward is None
    assert "ServerError" in trajectory.error and "127.0.0.1:9" in trajectory.error


CHOKING = [
    ('{"name": "bash", "arguments": {"command": "ls", "timeout": NaN}}', "got number NaN"),
    ('{"name": "bash", "arguments": {"command": "ls", "timeout": -Infinity}}', "got number -Infinity"),
    ('{"name": "create", "arguments": {"path": "a.py", "content": "x = \'\\ud800\'"}}', "lone surrogate"),
    ('{"name": "view", "arguments": {"path": "a.py", "start_line": true}}', "got boolean true"),
    ('{"name": "view", "arguments": {"path": ["a.py"]}}', "got an array"),
    ('{"name": "bash", "arguments": {"command": "ls", "timeout": ' + "9" * 5000 + "}}", "cannot read"),
    ('{"name": "view", "arguments": {"path": "a.py", "start_line": 1e999}}', "got number Infinity"),
    ('{"name": "bash", "arguments": {"command": "echo \\u0000"}}', "NUL character"),
]


def test_values_python_chokes_on_are_observations():
    texts = [f"<tool_calls>\n{body}\n</tool_calls>" for body, _ in CHOKING]
    env = SWEEnv([TASK], image_for=lambda task: BASE_IMAGE)
    trajectory = _episode(env, TextPolicy(texts), max_steps=len(texts), max_format_errors=len(texts) + 1,
                          max_new_tokens=8192)  # the 5000-digit number in one turn (the loop cuts at it)
    assert trajectory.status is EpisodeStatus.STEP_LIMIT and trajectory.error == ""
    observations = [m.content for m in trajectory.messages if m.role == "tool"]
    assert len(observations) == len(CHOKING)
    for observation, (_, expected) in zip(observations, CHOKING):
        assert expected in observation and "runner died" not in observation
    # the trajectory stays storable as strict UTF-8 JSON (the recorded calls held a lone surrogate and NaN)
    json.dumps(trajectory.to_dict(), ensure_ascii=False, allow_nan=False).encode("utf-8")


def test_a_run_the_machine_failed_is_no_score_and_a_rerun_retries_it(tmp_path, capsys):
    """Every episode a sandbox_error: `rollout` exits 1 naming the failure, `eval` leaves them out of the rate
    (never 0 of N), and a rerun into the same folder runs them again; the graded record then wins."""
    from lightswe.agent.rollout import LocalExecutor, RolloutConfig, default_env_factory, run_rollout
    from lightswe.agent.trajectory import finished_episode_ids, read_trajectories
    from lightswe.cli import main
    from lightswe.tasks.instance import write_jsonl

    broken = tmp_path / "broken.jsonl"
    write_jsonl([dataclasses.replace(TASK, source=str(tmp_path / "no-such-repository"), metadata={})], broken)
    out = tmp_path / "run"
    assert main(["rollout", "--tasks", str(broken), "--policy", "scripted", "--out", str(out), "--group-size", "2",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "every episode (2) ended in sandbox_error" in err and "SourceError" in err and "fix:" in err
    assert main(["eval", "--out", str(out)]) == 0
    report = json.loads((out / "eval_report.json").read_text())
    assert (report["episodes"], report["ungraded"], report["resolved"]) == (0, 2, 0)
    assert "2 episode(s) not graded" in (out / "eval_report.txt").read_text()
    assert finished_episode_ids(out) == set()  # nothing graded: a resume runs both again

    with LocalExecutor(ScriptedPolicy.from_tasks([TASK], TOK), TOK, env_factory=default_env_factory([TASK])) as ex:
        summary = run_rollout([TASK], ex, out_dir=out, config=RolloutConfig(group_size=2, progress=False))
    assert (summary.skipped, summary.episodes, summary.resolved, summary.resolve_rate) == (0, 2, 2, 1.0)
    stored = list(read_trajectories(out))
    assert len(stored) == 2 and all(t.graded and t.reward == 1.0 for t in stored)
    assert main(["eval", "--out", str(out)]) == 0
    report = json.loads((out / "eval_report.json").read_text())
    assert (report["episodes"], report["ungraded"], report["resolve_rate"]) == (2, 0, 1.0)


def test_a_failing_policy_cannot_turn_its_episode_into_no_score():
    """The policy's doing is never the machine's failure (tests/envs/test_reward_attacks_seventh.py: each attack):
    the harness's root processes signalled, every pid of the sandbox taken by a leftover in its own session, and
    a configuration file nested past the parser's recursion (an exception out of grading, before the fix: the
    episode was never written, so never scored). The episode ends graded, with the fix's reward."""
    fix = "sed -i 's/islice(seq, n + 1, None)/islice(seq, n, None)/' toolz/itertoolz.py"
    calls = [
        {"name": "bash", "arguments": {"command": fix}},
        {"name": "create", "arguments": {"path": "pyproject.toml", "content": "a = " + "[" * 5000 + "]" * 5000}},
        {"name": "bash", "arguments": {"command": "for p in $(pgrep -u root); do kill -9 $p; kill -STOP $p; done"}},
        {"name": "bash", "arguments": {"command": "setsid bash -c 'while :; do sleep 1000 & done' >/dev/null 2>&1 "
                                                  "& sleep 3"}},
        {"name": "submit", "arguments": {}},
    ]
    texts = [f"<tool_calls>\n{json.dumps(call)}\n</tool_calls>" for call in calls]
    trajectory = _episode(SWEEnv([TASK]), TextPolicy(texts), max_steps=len(texts))
    assert trajectory.status is EpisodeStatus.SUBMITTED and trajectory.graded, trajectory.error
    assert trajectory.reward == 1.0 and trajectory.error == ""
