"""The agent loop: observation -> policy -> one tool call -> ``env.step`` -> ... until the episode ends.

The whole episode is built in token space (``Conversation``): the policy sees token ids and its sampled tokens
are kept as they came, so the ``Trajectory`` is exactly what the learner trains on. How an episode ends is
control flow through a few named exceptions (as in mini-swe-agent), each carrying an ``EpisodeStatus``.

The environment parses the model's text (``lightswe.envs.tool_calls``): a malformed call comes back as an
observation saying what is wrong (``info["error"] == "format"``); ``max_format_errors`` consecutive ones end
the episode. The step budget is the loop's (``max_steps``), so use the unwrapped env (no ``TimeLimit``).

Example::

    env = gymnasium.make("lightswe/SWE-v0", tasks=[task]).unwrapped
    trajectory = run_episode(env, ScriptedPolicy.from_tasks([task], tok), tok, task_id=task.instance_id)
    trajectory.reward, trajectory.status   # 1.0, EpisodeStatus.SUBMITTED
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field

from lightswe.agent.chat import Conversation, Tokenizer
from lightswe.agent.early_stop import EarlyStopConfig, first_stop
from lightswe.agent.policies.base import ContextWindowExceeded, Policy, SamplingParams, check_sample
from lightswe.agent.trajectory import EpisodeStatus, Trajectory
from lightswe.errors import ActionError, InfrastructureError

SYSTEM_PROMPT = """You are an expert software engineer working in a repository at /testbed. Fix the issue the \
user describes by inspecting and editing the code with the tools below; run the tests you need; call \
`submit` when you are done. Think inside <think></think> if you like, then make exactly ONE tool call per \
turn in this format:
{example}
The tool's output comes back in the next message.

Tools (JSON schemas):
<tools>
{tools}
</tools>"""


@dataclass(kw_only=True, slots=True)
class AgentConfig:
    max_steps: int = 30  # tool calls, format errors included
    max_context_tokens: int = 32_768  # prompt + every turn
    max_new_tokens: int = 2_048  # per assistant turn
    max_format_errors: int = 3  # consecutive malformed tool calls that end the episode (format_errors_exceeded)
    temperature: float = 1.0  # sampling temperature (> 0)
    top_p: float = 1.0  # nucleus sampling: smallest token set with this much probability (1.0: off)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    system_prompt: str = SYSTEM_PROMPT  # the system message ({example} becomes a sample tool call)


class EpisodeEnd(Exception):
    """Raised inside the loop to end an episode; ``status`` says how it ended."""

    status: EpisodeStatus


class Submitted(EpisodeEnd):
    status = EpisodeStatus.SUBMITTED


class StepLimitExceeded(EpisodeEnd):
    status = EpisodeStatus.STEP_LIMIT


class ContextLimitExceeded(EpisodeEnd):
    status = EpisodeStatus.CONTEXT_LIMIT


class FormatErrorsExceeded(EpisodeEnd):
    status = EpisodeStatus.FORMAT_ERRORS_EXCEEDED


class RepetitionStopped(EpisodeEnd):
    status = EpisodeStatus.REPETITION_STOP


class SandboxFailed(EpisodeEnd):
    status = EpisodeStatus.SANDBOX_ERROR


def system_prompt(config: AgentConfig, tool_format: str = "minimax") -> str:
    """The system turn: instructions, the call format the env parses, and the tool schemas."""
    from lightswe.envs.tool_calls import EXAMPLES
    from lightswe.envs.tools import TOOL_SCHEMAS

    example = EXAMPLES[tool_format]
    tools = "\n".join(json.dumps(schema, ensure_ascii=False) for schema in TOOL_SCHEMAS)
    return config.system_prompt.format(example=example, tools=tools)


def _recorded_call(env, text: str) -> dict | None:
    """The call the env ran, for the viewer (parsed with the env's own parser)."""
    from lightswe.envs.tool_calls import PARSERS

    try:
        calls = PARSERS[getattr(env, "tool_format", "minimax")](text)
    except ActionError:  # the env ran a call, so its parser read one; a custom env may parse otherwise
        return None
    return _storable({"name": calls[0].name, "arguments": calls[0].arguments}) if calls else None


_SURROGATE = re.compile("[\ud800-\udfff]")


MAX_STORED_DEPTH = 32  # nesting of a recorded call's arguments kept; deeper values are stored as a note


def _storable(value, depth: int = 0):
    """``value`` as strict JSON can store it (trajectories are UTF-8 JSONL/Parquet): lone surrogates become
    U+FFFD and NaN/Infinity their names, as strings; the env saw and refused the original. A list or object
    nested deeper than ``MAX_STORED_DEPTH`` becomes a note (a string): no tool takes nested arguments, and a call
    nested ~560 levels deep, which the env's JSON parser reads (and refuses as an argument), made this recursion
    raise ``RecursionError`` out of ``run_episode``: the rollout crashed and the episode was never written."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, (dict, list)) and depth >= MAX_STORED_DEPTH:
        return f"[a JSON {'object' if isinstance(value, dict) else 'array'} nested deeper than {MAX_STORED_DEPTH} " \
               "levels: not stored]"
    if isinstance(value, dict):
        return {_storable(k, depth + 1): _storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v, depth + 1) for v in value]
    return value


def _require_container(env, when: str) -> None:
    """Raise ``SandboxFailed`` when the episode's container was stopped, removed or frozen from outside (``docker
    kill``/``rm -f``/``pause``, the host's OOM killer taking its init, the engine gone; not when it stopped at
    its own memory limit, ``OOMKilled``: the commands filled it, and ``SWEEnv.step`` restarts it with an
    observation saying so, as it does when that limit kills the runner): the env would report a
    dead command runner as an observation (the same as a command that killed it) or restart the container from the
    base commit and go on, so the policy's edits would be lost and the rest scored. The agent user cannot stop or
    pause its own container (its init is root's), so this is never the policy's doing; a runner the policy killed
    leaves the container running and stays an observation. Envs without a Docker sandbox are not checked."""
    box = getattr(env, "sandbox", None)
    cid, api = getattr(box, "container_id", None), getattr(box, "api", None)
    if cid is None or api is None:
        return
    try:
        state = api.inspect_container(cid)["State"]
    except Exception as err:  # noqa: BLE001 - docker.errors.NotFound (removed), or the engine does not answer
        raise SandboxFailed(f"SandboxError: the episode's container {str(cid)[:12]} is gone {when} "
                            f"({type(err).__name__}: {str(err)[:200]})") from None
    if not state.get("Running") and state.get("OOMKilled") and not state.get("Paused"):
        return  # its own memory limit: the commands' doing; the env restarts it and says so (SWEEnv.step)
    if state.get("Paused") or not state.get("Running"):
        what = "paused" if state.get("Paused") else f"stopped ({state.get('Status')}, exit code " \
                                                     f"{state.get('ExitCode')}, OOMKilled {state.get('OOMKilled')})"
        raise SandboxFailed(f"SandboxError: the episode's container {str(cid)[:12]} was {what} {when}; not the "
                            "policy's doing: the episode is not scored")


@dataclass(kw_only=True, slots=True)
class _Clock:
    reset: float = 0.0
    generate: float = 0.0
    env: float = 0.0
    grade: float = 0.0


def run_episode(env, policy: Policy, tokenizer: Tokenizer, *, task_id: str, config: AgentConfig | None = None,
                group_id: str = "", sample_index: int = 0, seed: int | None = None,
                reset_options: dict | None = None) -> Trajectory:
    """Run one episode to its end and return its trajectory.

    Never raises for the policy's mistakes (they are observations or end the episode with a status) nor for
    the machine's: any :class:`~lightswe.errors.InfrastructureError` (Docker engine, container, image build,
    task source, grading, model server) ends the episode as ``EpisodeStatus.SANDBOX_ERROR`` with reward
    ``None`` and the error's text in ``Trajectory.error``; so does a sample no learner can train on (a NaN,
    infinite or positive log-prob, token ids and log-probs of different lengths: ``check_sample``). A model
    server whose context window is smaller than ``max_context_tokens`` ends the episode as ``context_limit``
    once the policy's turns filled it (``sandbox_error`` if the first prompt alone does not fit). Bad input
    from the user (an unknown ``task_id``,
    a :class:`~lightswe.errors.UserInputError`) is raised.

    ``seed`` (>= 0; None: unseeded): turn k samples with ``row_seed(seed, k)``, its own stream, so the episode's
    tokens depend on its seed, the weights and what the environment returns, not on other episodes.
    """
    from lightswe.model.generation import row_seed  # (torch: not at import, the command line imports this module)

    cfg = config or AgentConfig()
    group_id = group_id or f"{task_id}@0"
    conv, clock, started = Conversation(tokenizer), _Clock(), time.perf_counter()
    steps = format_errors = consecutive_errors = 0
    reward, tests, error, model_patch = 0.0, {}, "", ""
    try:
        try:
            t0 = time.perf_counter()
            observation, _ = env.reset(seed=seed, options={"task_id": task_id, **(reset_options or {})})
            clock.reset = time.perf_counter() - t0
            conv.add("system", system_prompt(cfg, getattr(env, "tool_format", "minimax")), markup=True)
            conv.add("user", observation)
            while True:
                if steps >= cfg.max_steps:
                    raise StepLimitExceeded(f"{steps} steps")
                budget = conv.room(cfg.max_context_tokens)
                if budget < 1:
                    raise ContextLimitExceeded(f"{len(conv.token_ids)} tokens")
                sampling = SamplingParams(max_new_tokens=min(cfg.max_new_tokens, budget), temperature=cfg.temperature,
                                          top_p=cfg.top_p, stop_token_ids=conv.stop_token_ids, early_stop=cfg.early_stop,
                                          seed=None if seed is None else row_seed(seed, steps))
                t0 = time.perf_counter()
                prompt = conv.start_assistant()
                try:  # every backend's sample checked here: a NaN/inf/positive log-prob never enters the record
                    tokens, logprobs = check_sample(policy.generate(prompt, sampling), sampling)
                except ContextWindowExceeded as err:  # the model server's window, smaller than the loop's budget
                    if steps == 0:  # the harness's first prompt alone: not the policy's doing
                        raise SandboxFailed(f"ContextWindowExceeded: the first prompt ({len(prompt)} tokens) does "
                                            f"not fit the model server: {err}; fix: serve the model with a larger "
                                            "--max-model-len, or lower --agent.max-context-tokens") from err
                    raise ContextLimitExceeded(str(err)) from err  # its own turns and the outputs it asked for
                clock.generate += time.perf_counter() - t0
                cut = first_stop(logprobs, cfg.early_stop)
                if cut is not None:
                    conv.add_generated(tokens[:cut], logprobs[:cut], finish_reason="early_stop")
                    raise RepetitionStopped(f"{cfg.early_stop.window} tokens above p={cfg.early_stop.min_prob}")
                message = conv.add_generated(tokens, logprobs)
                steps += 1
                if message.finish_reason == "length" and budget < cfg.max_new_tokens:
                    raise ContextLimitExceeded(f"the turn filled the context ({len(conv.token_ids)} tokens)")
                t0 = time.perf_counter()
                _require_container(env, "before the tool call")
                observation, step_reward, terminated, truncated, info = env.step(message.content)
                if info.get("error") == "sandbox":  # the env lost the container (a SandboxError) and restarted it
                    raise SandboxFailed(f"SandboxError: {observation[:500]}")  # from the base commit: not scorable
                if not terminated:  # (grading checks its own containers)
                    _require_container(env, "during the tool call")
                clock.env += time.perf_counter() - t0
                if info.get("error") == "format":
                    message.format_error = observation
                else:
                    message.tool_call = _recorded_call(env, message.content)
                if terminated:
                    clock.grade = float(info.get("grade_s", 0.0))
                    reward, tests = float(step_reward), dict(info.get("tests") or {})
                    model_patch = str(info.get("model_patch") or "")
                    raise Submitted()
                conv.add("tool", observation)
                if len(conv.token_ids) >= cfg.max_context_tokens:
                    conv.drop_last()  # keep the trajectory within the budget the learner trains on
                    raise ContextLimitExceeded(f"the tool output does not fit in {cfg.max_context_tokens} tokens")
                if message.format_error:
                    format_errors, consecutive_errors = format_errors + 1, consecutive_errors + 1
                    if consecutive_errors >= cfg.max_format_errors:
                        raise FormatErrorsExceeded(message.format_error)
                else:
                    consecutive_errors = 0
                if truncated:
                    raise StepLimitExceeded("the environment truncated the episode")
        except InfrastructureError as err:  # engine, container, image, source, grading, model server
            raise SandboxFailed(f"{type(err).__name__}: {err}") from err
    except EpisodeEnd as end:
        status = end.status
        if status is EpisodeStatus.SANDBOX_ERROR:
            reward, error = None, str(end)
    return Trajectory(
        episode_id=f"{group_id}/{sample_index}", task_id=task_id, group_id=group_id,
        sample_index=sample_index, token_ids=conv.token_ids, loss_mask=conv.loss_mask, logprobs=conv.logprobs,
        reward=reward, status=status, messages=conv.messages, tests=tests, num_steps=steps,
        num_format_errors=format_errors, policy=getattr(policy, "name", type(policy).__name__),
        policy_version=getattr(policy, "version", 0), error=error, created_at=time.time(), model_patch=model_patch,
        timings={"reset": clock.reset, "generate": clock.generate, "env": clock.env, "grade": clock.grade,
                 "total": time.perf_counter() - started})
