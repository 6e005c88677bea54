"""Episodes in the real environment (Docker): scripted, tiny model, OpenAI-compatible server, token exactness."""

from __future__ import annotations

import threading

import pytest
from lightswe.agent.early_stop import EarlyStopConfig
from lightswe.agent.loop import AgentConfig, run_episode
from lightswe.agent.policies.model import ModelPolicy
from lightswe.agent.policies.openai_server import OpenAIPolicy
from lightswe.agent.policies.scripted import ScriptedPolicy
from lightswe.agent.rollout import LocalExecutor, RolloutConfig, default_env_factory, run_rollout
from lightswe.agent.trajectory import EpisodeStatus, Trajectory, read_trajectories
from lightswe.envs.swe_env import default_tasks_path
from lightswe.envs.tool_calls import parse_minimax
from lightswe.model import ByteTokenizer
from lightswe.tasks.instance import read_jsonl

from .completions_server import CompletionsServer

pytestmark = pytest.mark.docker
TOK = ByteTokenizer()


class Recording:
    """Wraps a real policy and keeps what it returned, to compare with the trajectory."""

    def __init__(self, policy) -> None:
        self.policy, self.name, self.samples = policy, policy.name, []
        self._lock = threading.Lock()

    def of(self, t: Trajectory) -> list:
        """The samples of one episode: its tokens continue the prompt with exactly them."""
        return [s for s in self.samples if t.token_ids[: len(s[0]) + len(s[1])] == s[0] + s[1]]

    def generate(self, token_ids, sampling):
        tokens, logprobs = self.policy.generate(token_ids, sampling)
        with self._lock:
            self.samples.append((list(token_ids), list(tokens), list(logprobs)))
        return tokens, logprobs


def assert_token_exact(t: Trajectory, samples: list | None = None) -> None:
    """Spans tile the tokens, each decodes to its turn, and the mask is 1 on exactly the generated tokens."""
    assert [m.start for m in t.messages] == [0] + [m.end for m in t.messages[:-1]]
    assert t.messages[-1].end == len(t.token_ids)
    text = ""
    for m in t.messages:
        piece = TOK.decode(t.token_ids[m.start:m.end])
        assert piece in (f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n",
                         f"<|im_start|>{m.role}\n{m.content}<|endoftext|>\n")
        text += piece
        header = len(TOK.encode(f"<|im_start|>{m.role}\n"))
        mask = t.loss_mask[m.start:m.end]
        if m.role != "assistant":
            assert sum(mask) == 0
            continue
        generated = len(mask) - header - (1 if m.finish_reason == "stop" else 2)  # "\n" (+ "<|im_end|>") glue
        assert mask == [0] * header + [1] * generated + [0] * (len(mask) - header - generated)
    assert TOK.decode(t.token_ids) == text
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.loss_mask) if not m)
    if samples is not None:  # the policy's own outputs, in order, are exactly the masked tokens
        got = [(i, t.logprobs[i]) for i, m in enumerate(t.loss_mask) if m]
        want_tokens = [tok for _, tokens, _ in samples for tok in tokens]
        want_logprobs = [lp for _, _, logprobs in samples for lp in logprobs]
        assert [t.token_ids[i] for i, _ in got] == want_tokens[: len(got)]
        assert [lp for _, lp in got] == pytest.approx(want_logprobs[: len(got)])
        for prompt, _, _ in samples:  # each prompt is a prefix of the final trajectory
            assert t.token_ids[: len(prompt)] == prompt


@pytest.fixture(scope="module")
def tasks():
    return read_jsonl(default_tasks_path())


@pytest.fixture(scope="module")
def env(tasks):
    env = default_env_factory(tasks)()
    yield env
    env.close()


def test_scripted_policy_resolves_a_real_task(env, tasks):
    policy = Recording(ScriptedPolicy.from_tasks(tasks, TOK))
    t = run_episode(env, policy, TOK, task_id=tasks[0].instance_id)
    assert (t.status, t.reward) == (EpisodeStatus.SUBMITTED, 1.0), t.error
    assert t.tests and all(outcome == "passed" for outcome in t.tests.values())
    assert [m.tool_call["name"] for m in t.messages if m.role == "assistant"] == ["view", "str_replace", "bash", "submit"]
    for m in t.messages:
        if m.role == "assistant":  # MiniMax format, parsed by the env's parser
            assert [c.name for c in parse_minimax(m.content)] == [m.tool_call["name"]]
    assert "1 passed" in t.messages[-2].content  # the FAIL_TO_PASS test, run by the agent after its edit
    assert len(policy.of(t)) == len(policy.samples) == 4
    assert_token_exact(t, policy.of(t))


def test_openai_client_drives_an_episode_through_a_local_server(env, tasks):
    with CompletionsServer(ScriptedPolicy.from_tasks(tasks, TOK), decode=TOK.decode) as server:
        t = run_episode(env, OpenAIPolicy(server.url, model="scripted"), TOK, task_id=tasks[0].instance_id)
        assert len(server.requests) == 4 and all(r["return_tokens_as_token_ids"] for r in server.requests)
    assert (t.status, t.reward) == (EpisodeStatus.SUBMITTED, 1.0)
    assert_token_exact(t)


def test_tiny_model_runs_full_episodes(tmp_path, tasks):
    policy = Recording(ModelPolicy.from_spec("tiny", seed=0))
    agent = AgentConfig(max_steps=3, max_new_tokens=48, max_format_errors=2, temperature=1.0)
    with LocalExecutor(policy, TOK, env_factory=default_env_factory(tasks), concurrency=2, agent=agent) as ex:
        summary = run_rollout(tasks, ex, out_dir=tmp_path, config=RolloutConfig(group_size=2, progress=False))
    assert summary.failed == 0 and summary.episodes == 2
    stored = sorted(read_trajectories(tmp_path), key=lambda t: t.sample_index)
    assert [t.episode_id for t in stored] == [f"{tasks[0].instance_id}@0/0", f"{tasks[0].instance_id}@0/1"]
    for t in stored:
        assert t.status in (EpisodeStatus.FORMAT_ERRORS_EXCEEDED, EpisodeStatus.STEP_LIMIT, EpisodeStatus.SUBMITTED)
        assert t.reward is not None and 1 <= t.num_steps <= 3 and t.num_format_errors >= 1
        assert t.policy == "model:tiny" and t.group_id == f"{tasks[0].instance_id}@0"
        assert len(policy.of(t)) == t.num_steps
        assert_token_exact(t, policy.of(t))
    assert sum(t.num_steps for t in stored) == len(policy.samples)


@pytest.mark.parametrize("limits,status", [
    ({"early_stop": EarlyStopConfig(window=20, min_prob=0.99)}, EpisodeStatus.REPETITION_STOP),
    ({"max_steps": 2}, EpisodeStatus.STEP_LIMIT),
    ({"max_context_tokens": 0}, EpisodeStatus.CONTEXT_LIMIT),  # set below to "prompt + 40 tokens"
], ids=["early-stop", "step-limit", "context-limit"])
def test_episode_ends_at_its_limits(env, tasks, limits, status):
    policy = ScriptedPolicy.from_tasks(tasks, TOK)  # log-prob 0 on every token: probability 1 > p
    if "max_context_tokens" in limits:
        prompt = run_episode(env, policy, TOK, task_id=tasks[0].instance_id, config=AgentConfig(max_steps=0))
        limits = {"max_context_tokens": len(prompt.token_ids) + 40}
    t = run_episode(env, policy, TOK, task_id=tasks[0].instance_id, config=AgentConfig(**limits))
    assert t.status is status and t.reward == 0.0 and not t.tests
    assert_token_exact(t)
    last = t.messages[-1]
    if status is EpisodeStatus.REPETITION_STOP:
        assert last.role == "assistant" and last.finish_reason == "early_stop" and sum(t.loss_mask) == 20
    if status is EpisodeStatus.STEP_LIMIT:
        assert t.num_steps == 2 and [m.role for m in t.messages[-2:]] == ["assistant", "tool"]
    if status is EpisodeStatus.CONTEXT_LIMIT:
        assert last.finish_reason == "length" and len(t.token_ids) <= limits["max_context_tokens"]


def test_unreachable_engine_is_a_sandbox_error_not_a_crash(tasks):
    import docker
    from lightswe.envs.swe_env import SWEEnv

    dead = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41", timeout=5)
    env = SWEEnv(tasks, client=dead, image_for=lambda task: "lightswe/never-built:0")
    t = run_episode(env, ScriptedPolicy.from_tasks(tasks, TOK), TOK, task_id=tasks[0].instance_id)
    assert t.status is EpisodeStatus.SANDBOX_ERROR and t.reward is None  # the learner excludes it, never scores 0
    assert "Connection aborted" in t.error and t.num_steps == 0 and t.token_ids == []


def test_hermes_format_end_to_end(tasks):
    from lightswe.envs.swe_env import SWEEnv

    env = SWEEnv(tasks, tool_format="hermes")
    try:
        policy = ScriptedPolicy.from_tasks(tasks, TOK, tool_format="hermes")
        t = run_episode(env, policy, TOK, task_id=tasks[0].instance_id)
    finally:
        env.close()
    assert (t.status, t.reward) == (EpisodeStatus.SUBMITTED, 1.0)
    assert '<tool_call>{"name": "bash"' in t.messages[0].content  # the system prompt teaches the env's format
    assert all("<tool_call>" in m.content for m in t.messages if m.role == "assistant")
