"""A deterministic policy shipped for tests and demos: it replays a per-task script of tool calls.

The default script comes from the task's gold patch (hunks split by ``lightswe.envs.demo.patch_edits``): view
the lines of each hunk, apply it with ``str_replace`` (``create`` for a new file), run the FAIL_TO_PASS tests,
then ``submit``. Output is MiniMax's
tool-call format (``format_minimax``; ``tool_format="hermes"`` for Hermes), so the run exercises the same
parser a real model's text goes through.

The policy is stateless: the task is the one whose problem statement appears in the prompt, and the step is
the number of assistant turns already in it. So one instance serves any number of concurrent episodes.
Log-probs are 0.0 (probability 1): the script is certain.

Example::

    policy = ScriptedPolicy.from_tasks(tasks, tokenizer)
    trajectory = run_episode(env, policy, tokenizer, task_id=tasks[0].instance_id)   # reward 1.0
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from lightswe.agent.chat import IM_END, IM_START, Tokenizer
from lightswe.agent.policies.base import Sample, SamplingParams, check_sample
from lightswe.errors import UserInputError


def script_from_patch(patch: str, *, test_ids: Sequence[str] = ()) -> list:
    """Tool calls that apply a unified diff through the agent's tools, run the failing tests, then submit."""
    from lightswe.envs.demo import patch_edits
    from lightswe.envs.tool_calls import ToolCall

    calls = []
    for path, first, old, new in patch_edits(patch):
        if old.strip() == "" and first == 0:  # a new file
            calls.append(ToolCall(name="create", arguments={"path": path, "content": new}))
            continue
        calls.append(ToolCall(name="view", arguments={"path": path, "start_line": max(1, first - 3),
                                                      "end_line": first + old.count("\n") + 3}))
        calls.append(ToolCall(name="str_replace", arguments={"path": path, "old_str": old, "new_str": new}))
    if test_ids:
        command = "python -m pytest -q -p no:cacheprovider -o addopts= " + " ".join(shlex.quote(t) for t in test_ids[:5])
        calls.append(ToolCall(name="bash", arguments={"command": command}))
    calls.append(ToolCall(name="submit", arguments={}))
    return calls


class ScriptedPolicy:
    name = "scripted"

    def __init__(self, scripts: Mapping[str, Sequence], tokenizer: Tokenizer, *, tool_format: str = "minimax",
                 version: int = 0) -> None:
        """``scripts`` maps a problem statement to its tool calls (``ToolCall`` records)."""
        from lightswe.envs import tool_calls

        if tool_format not in tool_calls.PARSERS:
            raise UserInputError(f"tool_format must be one of {sorted(tool_calls.PARSERS)}, got {tool_format!r}")
        self._format = getattr(tool_calls, f"format_{tool_format}")
        self.scripts, self.tokenizer, self.version = dict(scripts), tokenizer, version
        self._im_end = tokenizer.token_id(IM_END)
        self._assistant_header = [tokenizer.token_id(IM_START), *tokenizer.encode_ordinary("assistant\n")]

    @classmethod
    def from_tasks(cls, tasks: Sequence, tokenizer: Tokenizer, **kwargs) -> ScriptedPolicy:
        """Gold-patch scripts for ``TaskInstance``s (the patch is the fix; tests are not edited)."""
        return cls({t.problem_statement.strip(): script_from_patch(t.patch, test_ids=t.FAIL_TO_PASS)
                    for t in tasks}, tokenizer, **kwargs)

    def _script_for(self, prompt: str) -> Sequence:
        for statement, script in self.scripts.items():
            if statement in prompt:
                return script
        raise UserInputError("ScriptedPolicy: no script's problem statement appears in the prompt; build the policy "
                         "from the same tasks the rollout runs (ScriptedPolicy.from_tasks(tasks, tokenizer))")

    def generate(self, token_ids: Sequence[int], sampling: SamplingParams) -> Sample:
        prompt = self.tokenizer.decode(list(token_ids))
        script = self._script_for(prompt)
        step = self._assistant_turns(token_ids) - 1  # the open turn is the last header
        call = script[min(step, len(script) - 1)]
        tok = self.tokenizer
        tokens = [*tok.encode("<think>"), *tok.encode_ordinary(f"\nStep {step + 1} of {len(script)}: {call.name}.\n"),
                  *tok.encode("</think>"), *tok.encode_ordinary("\n"), *self._encode_calls([call]), self._im_end]
        return check_sample((tokens, [0.0] * len(tokens)), sampling)

    def _assistant_turns(self, token_ids: Sequence[int]) -> int:
        """Assistant headers in the prompt, counted in token space (environment text cannot hold a header)."""
        ids, header = list(token_ids), self._assistant_header
        return sum(ids[i:i + len(header)] == header for i, t in enumerate(ids) if t == header[0])

    def _encode_calls(self, calls: Sequence) -> list[int]:
        """The calls' text with markup as the model's special tokens and the JSON (file text) as ordinary tokens."""
        from lightswe.envs.tool_calls import call_json

        text, tokens, position = self._format(list(calls)), [], 0
        for call in calls:
            data = call_json(call)
            at = text.index(data, position)
            tokens += [*self.tokenizer.encode(text[position:at]), *self.tokenizer.encode_ordinary(data)]
            position = at + len(data)
        return tokens + self.tokenizer.encode(text[position:])
