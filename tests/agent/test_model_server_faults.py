"""Failures between the model and the sandbox, with real parts: a model server process that misbehaves
(tests/agent/faulty_server.py), the Docker engine killing, removing or freezing an episode's container from
outside. The rule: the machine's failure is reward None (``sandbox_error``), retried where a retry can help; the
policy's is 0.0 or an observation; nothing a learner cannot train on is ever stored.

Before the fixes (attack9): a body cut mid-way (IncompleteRead), a body that is not JSON, a ``null`` log-prob,
``token_id:x`` and fewer log-probs than tokens escaped the loop as plain exceptions (the episode unwritten, the
`rollout` exit 1 as a "bug"); NaN / infinite / positive log-probs and negative token ids were stored (the store
then refused the whole folder: every resume and every step failed); 429 was not retried, Retry-After ignored; a
server trickling its answer held a turn past ``timeout_s`` without end; vLLM's "maximum context length" 400 ended
a long episode as the machine's failure (None), so the policy's overlong episodes were never scored.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lightswe.agent.policies.base import ContextWindowExceeded, SampleError, SamplingParams
from lightswe.agent.policies.openai_server import OpenAIPolicy, ServerError
from lightswe.errors import InfrastructureError

SERVER = Path(__file__).with_name("faulty_server.py")
PROMPT = list(range(10))
SAMPLING = SamplingParams(max_new_tokens=64, stop_token_ids=[2])


class Server:
    """tests/agent/faulty_server.py as a process of its own."""

    def __init__(self, *args: str, scheme: str = "http") -> None:
        self.proc = subprocess.Popen([sys.executable, str(SERVER), *args], stdout=subprocess.PIPE, text=True)
        self.url = f"{scheme}://127.0.0.1:{int(self.proc.stdout.readline())}/v1"

    def policy(self, fault: str, **kwargs) -> OpenAIPolicy:
        return OpenAIPolicy(self.url, model=fault, **{"retries": 1, "timeout_s": 2.0, **kwargs})

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.mark.parametrize("fault", ["status:500", "status:502", "status:503", "status:429", "reset", "cut",
                                   "malformed", "notjsonobj"])
def test_server_failures_are_retried_then_infrastructure_errors(server, fault):
    with pytest.raises(ServerError, match="after 2 attempt"):
        server.policy(fault).generate(PROMPT, SAMPLING)
    # the same fault once, then a healthy answer: the retry hides it
    assert server.policy(f"{fault}#1").generate(PROMPT, SAMPLING) == ([104, 105, 2], [-1.0, -1.0, -1.0])


def test_429_waits_as_retry_after_asks(server):
    started = time.monotonic()
    assert server.policy("status:429#1 retry-after").generate(PROMPT, SAMPLING)[0] == [104, 105, 2]
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 (the plain backoff is 0.5 s)


SLOW_LORIS = ["trickle-status", "trickle-head", "trickle-chunked", "trickle-chunksize", "trickle-error"]


@pytest.mark.parametrize("fault", ["hang", "trickle", *SLOW_LORIS])
def test_a_response_that_never_ends_is_cut_at_the_timeout(server, fault):
    """One deadline per request (connect + headers + body): before, a server trickling its status line, a header,
    chunks or an error body a byte per read held the episode forever (each read was bounded, not the request)."""
    started = time.monotonic()
    with pytest.raises(ServerError, match="unreachable or cut off.*did not end within 1.5 s"):
        server.policy(fault, retries=0, timeout_s=1.5).generate(PROMPT, SAMPLING)
    assert time.monotonic() - started < 3  # trickle: one byte every 0.2 s would take a minute; the rest, forever


@pytest.mark.parametrize("fault", ["trickle-head", "trickle-chunked"])
def test_a_slow_loris_server_is_retried_like_the_other_faults(server, fault):
    started = time.monotonic()
    with pytest.raises(ServerError, match="after 2 attempt"):
        server.policy(fault, timeout_s=1.0).generate(PROMPT, SAMPLING)
    assert time.monotonic() - started < 1.0 * 2 + 0.5 + 1.5  # two deadlines and the 0.5 s backoff
    assert server.policy(f"{fault}#1", timeout_s=1.0).generate(PROMPT, SAMPLING) == ([104, 105, 2], [-1.0] * 3)


@pytest.mark.parametrize(("fault", "expected"), [
    ("empty", "no choices"), ("nologprobs", "no choices"), ("nulllp", "not a number"),
    ("nan", "finite and <= 0"), ("inf", "finite and <= 0"), ("-inf", "finite and <= 0"),
    ("positive", "finite and <= 0"), ("short", "3 tokens but 2 log-probs"), ("badtoken", "token_id:x"),
    ("negtoken", "token_id:-5"), ("status:400", "HTTP 400"), ("notokens", "no token"), ("abort", "aborted")])
def test_answers_no_learner_can_use_are_infrastructure_errors(server, fault, expected):
    from lightswe.errors import NonFiniteError

    with pytest.raises(ServerError, match=expected) as info:
        server.policy(fault).generate(PROMPT, SAMPLING)
    # a NaN / infinite log-prob is the non-finite kind every sampler reports (the built-in ones included)
    assert isinstance(info.value, NonFiniteError) == (fault in ("nan", "inf", "-inf"))


def test_every_backends_sample_is_checked_once():
    from lightswe.agent.policies.base import check_sample

    for bad in (([1, 2], [-0.1]), ([1], [float("nan")]), ([1], [float("-inf")]), ([1], [0.5]), ([-1], [-0.1])):
        with pytest.raises(SampleError) as info:
            check_sample(bad, SAMPLING)
        assert isinstance(info.value, InfrastructureError)
    assert check_sample(([5, 2, 7], [-0.5, 0.0, -1.0]), SAMPLING) == ([5, 2], [-0.5, 0.0])


def test_a_request_past_the_context_window(server):
    # vLLM reports max_model_len: max_tokens is capped to the room left; no room at all is the window's end
    assert server.policy("context").generate(list(range(4000)), SAMPLING)[0] == [104, 105, 2]
    with pytest.raises(ContextWindowExceeded, match="4096"):
        server.policy("context").generate(list(range(4096)), SAMPLING)
    hidden = Server("--hide-max-model-len")  # a server that does not report it: its 400 says the same
    try:
        with pytest.raises(ContextWindowExceeded, match="maximum context length"):
            hidden.policy("context").generate(list(range(4000)), SamplingParams(max_new_tokens=200))
    finally:
        hidden.close()


# ----------------------------------------------------------------------------------------- whole episodes


@pytest.fixture
def task():
    from lightswe.envs.swe_env import default_tasks_path
    from lightswe.tasks.instance import read_jsonl

    return read_jsonl(default_tasks_path())[0]


def _episode(env, policy, task, **config):
    from lightswe.agent.loop import AgentConfig, run_episode
    from lightswe.model import ByteTokenizer

    return run_episode(env, policy, ByteTokenizer(), task_id=task.instance_id,
                       config=AgentConfig(max_format_errors=50, **config))


def _base_env(task):
    from lightswe.envs.engine import BASE_IMAGE
    from lightswe.envs.swe_env import SWEEnv

    return SWEEnv([task], image_for=lambda _: BASE_IMAGE)


@pytest.mark.docker
def test_episode_model_server_faults_and_the_context_window(task, tmp_path):
    """Mid-episode: a NaN log-prob after two good turns is sandbox_error (None), stored and read back; the
    server's window filled by the policy's turns is context_limit (0.0, scored); the first prompt alone past the
    window is sandbox_error."""
    from lightswe.agent.trajectory import EpisodeStatus, TrajectoryWriter, read_trajectories

    env = _base_env(task)
    srv = Server()
    try:
        nan = _episode(env, _Sequence(srv, ["ok", "ok", "nan"]), task)
        assert nan.status is EpisodeStatus.SANDBOX_ERROR and nan.reward is None and nan.num_steps == 2
        assert "finite and <= 0" in nan.error
        with TrajectoryWriter(tmp_path, parquet=False) as writer:
            writer.write(nan)
        assert [t.episode_id for t in read_trajectories(tmp_path)] == [nan.episode_id]

        ok = _episode(env, srv.policy("ok"), task, max_steps=1)
        first_prompt = ok.messages[2].start + 3  # system and user turns, then the assistant header
    finally:
        srv.close()
    small = Server("--max-model-len", str(first_prompt + 200))
    tiny = Server("--max-model-len", str(first_prompt - 5))
    try:
        long = _episode(env, small.policy("ok"), task, max_steps=30)
        assert long.status is EpisodeStatus.CONTEXT_LIMIT and long.reward == 0.0 and long.num_steps >= 1
        assert long.graded and long.truncated  # scored, and DAPO's overlong filter sees it
        first = _episode(env, tiny.policy("ok"), task)
        assert first.status is EpisodeStatus.SANDBOX_ERROR and first.reward is None
        assert "ContextWindowExceeded" in first.error and "--max-model-len" in first.error
    finally:
        small.close()
        tiny.close()
        env.close()


class _Sequence:
    """The faulty server's faults in turn order (turn k asks for ``faults[k]``)."""

    name = "sequence"

    def __init__(self, server: Server, faults: list[str]) -> None:
        self.policies = [server.policy(f, retries=0) for f in faults]
        self.turn = 0

    def generate(self, token_ids, sampling):
        policy = self.policies[min(self.turn, len(self.policies) - 1)]
        self.turn += 1
        return policy.generate(token_ids, sampling)


class _Saboteur:
    """Answers a bash call each turn. ``between``: before turn ``at`` it runs ``docker ACTION`` on the episode's
    container; ``during``: turn ``at`` asks for ``sleep 30`` and the action comes 1.5 s into it."""

    name = "saboteur"

    def __init__(self, env, action: list[str], when: str, at: int = 1) -> None:
        from lightswe.model import ByteTokenizer

        self.env, self.action, self.when, self.at, self.turn, self.tok = env, action, when, at, 0, ByteTokenizer()
        self.timer: threading.Timer | None = None

    def _sabotage(self, cid: str) -> None:
        subprocess.run(["docker", *self.action, cid], check=True, capture_output=True, timeout=60)

    def generate(self, token_ids, sampling):
        from lightswe.agent.chat import IM_END

        command = "ls"
        if self.turn == self.at and self.when == "between":
            self._sabotage(self.env.sandbox.container_id)
        elif self.turn == self.at:
            command = "sleep 30"
            self.timer = threading.Timer(1.5, self._sabotage, args=(self.env.sandbox.container_id,))
            self.timer.start()
        self.turn += 1
        text = '<tool_calls>\n{"name": "bash", "arguments": {"command": "%s"}}\n</tool_calls>' % command
        tokens = [*self.tok.encode(text), self.tok.token_id(IM_END)]
        return tokens, [-1.0] * len(tokens)


def _own_containers() -> set[str]:
    import os

    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=lightswe.owner_pid={os.getpid()}"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.docker
@pytest.mark.parametrize(("action", "when"), [(["kill"], "between"), (["rm", "-f"], "between"),
                                              (["pause"], "between"), (["kill"], "during"), (["rm", "-f"], "during")],
                         ids=["kill", "rm", "pause", "kill-mid-command", "rm-mid-command"])
def test_the_episode_container_killed_removed_or_frozen_from_outside(task, action, when):
    """``docker kill`` (what the host's OOM killer does to the container's init), ``docker rm -f`` and
    ``docker pause`` between two turns or in the middle of a command: the episode is sandbox_error (None; before
    the fix the env reported a dead runner, restarted the container from the base commit and the episode went on
    to be scored), the same env's next episode gets a fresh container and the scripted fix its 1.0, and closing
    the env leaves no container of this process."""
    from lightswe.agent.policies.scripted import ScriptedPolicy
    from lightswe.agent.trajectory import EpisodeStatus
    from lightswe.envs.swe_env import SWEEnv
    from lightswe.model import ByteTokenizer

    before = _own_containers()
    env = SWEEnv([task])
    saboteur = _Saboteur(env, action, when)
    try:
        broken = _episode(env, saboteur, task, max_steps=4)
        assert broken.status is EpisodeStatus.SANDBOX_ERROR and broken.reward is None, broken.error
        assert broken.error.startswith("SandboxError") and broken.num_steps <= 3
        fixed = _episode(env, ScriptedPolicy.from_tasks([task], ByteTokenizer()), task)
        assert fixed.status is EpisodeStatus.SUBMITTED and fixed.reward == 1.0, fixed.error
    finally:
        if saboteur.timer is not None:
            saboteur.timer.join()
        env.close()
    assert _own_containers() <= before


def test_the_built_in_model_gone_numerically_wrong_is_refused_per_request():
    """A real model whose weights turned NaN (an overflow, a bad update), sampled greedily (at temperature > 0
    torch.multinomial raises on NaN first): its samples carry NaN log-probs, which ``check_sample`` refuses as that
    request's SampleError (an InfrastructureError: the episode is not scored; before, stored as NaN), in the
    batched path too (the request's own error, not its batch-mates')."""
    import torch
    from lightswe.agent.policies.model import ModelPolicy

    policy = ModelPolicy.from_spec("tiny", seed=0)
    with torch.no_grad():
        policy.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(SampleError, match="finite"):
        policy.generate([1, 2, 3], SamplingParams(max_new_tokens=4, temperature=0.0))
    with pytest.raises(SampleError, match="finite"):
        policy.generate_batch([[1, 2, 3], [4, 5]], SamplingParams(max_new_tokens=4, temperature=0.0))


def test_a_server_whose_token_ids_mean_other_text_is_refused_before_any_episode(tmp_path, capsys):
    """Token ids that do not match the text: a server serving another tokenizer than ``--tokenizer`` returns ids
    that decode here to what the model did not write (the env would run it, the learner train on it). Its
    ``/tokenize`` is compared once with ours: ``rollout`` refuses in one line (exit 2) before any episode; the same
    tokenizer, or a server without ``/tokenize``, passes."""
    from lightswe.cli import main
    from lightswe.errors import UserInputError
    from lightswe.model import ByteTokenizer

    same, other, silent = Server(), Server("--other-tokenizer"), Server("--no-tokenize")
    try:
        same.policy("ok").check_tokenizer(ByteTokenizer())
        silent.policy("ok").check_tokenizer(ByteTokenizer())
        with pytest.raises(UserInputError, match="other text here"):
            other.policy("ok").check_tokenizer(ByteTokenizer())
        code = main(["rollout", "--tasks", "demo", "--policy", f"openai:{other.url}", "--out", str(tmp_path / "r"),
                     "--no-progress"])
    finally:
        for srv in (same, other, silent):
            srv.close()
    err = capsys.readouterr().err
    assert code == 2 and "other text here" in err and "fix:" in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "r").glob("part-*"))  # no episode ran


@pytest.mark.slow  # (14 s: a local Ray cluster; the checks themselves run in the default suite on the threads path)
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="pip install 'lightswe[ray]'")
def test_ray_rollouts_run_the_same_server_checks_on_an_actor(tmp_path, capsys):
    """``rollout --ray``: the server's checks (spec.preflight: model served, tokenizer) run on an actor, the process
    that talks to the server, before any episode; before, --ray skipped them and a wrong model name became one
    sandbox_error per episode (vLLM's 404 each time). Same one-line refusals as in threads, exit 2."""
    import ray
    from lightswe.cli import main

    ok, other = Server(), Server("--other-tokenizer")
    try:
        cases = [(f"openai:{ok.url}?model=Qwen/Qwen2.5-0.5B", "serves 'default'"),  # not the served name
                 (f"openai:{other.url}", "other text here")]  # ids that mean other text here
        for ray_arg in (["--ray"], []):  # on a local Ray cluster's actor, and in threads: the same refusal
            for spec, expected in cases:
                out = tmp_path / f"r{len(ray_arg)}-{expected[:5]}"
                code = main(["rollout", "--tasks", "demo", "--policy", spec, "--out", str(out), "--no-progress",
                             "--concurrency", "1", *ray_arg])
                err = capsys.readouterr().err
                assert code == 2 and expected in err and "fix:" in err, err[-2000:]
                ours = [line for line in err.splitlines() if "lightswe rollout:" in line]  # (and Ray's start-up log)
                assert len(ours) == 1 and err.strip().splitlines()[-1] == ours[0], err[-2000:]
                assert not out.exists()  # refused before the run folder was written
    finally:
        ok.close()
        other.close()
        ray.shutdown()
