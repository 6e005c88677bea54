"""``lightswe/SWE-v0``: a Gymnasium environment in which an agent fixes a real repository inside Docker.

- ``reset(seed, options={"task_id": ...})`` picks a task (``self.np_random`` unless named), takes a fresh
  container of the task's instance image from a warm :class:`~lightswe.envs.pool.SandboxPool` (no episode has
  touched it: nothing of an earlier episode survives, by construction), hands the used one to the pool for
  removal in the background, and returns the problem statement as the observation. ``fresh_sandbox()`` hands
  out another untouched container of the current task's image (for grading; the caller closes it).
- ``step(action)``: the action is the model's text holding exactly one tool call (MiniMax-M1
  ``<tool_calls>`` format by default, ``tool_format="hermes"`` for ``<tool_call>``) or a parsed
  :class:`~lightswe.envs.tool_calls.ToolCall`. Tools: bash, view, str_replace, create, search, submit. A
  malformed action gives an observation saying what is wrong and the expected form (reward 0, not terminated).
  A container whose runner died and cannot restart is replaced by a fresh one from the base commit: an
  observation when the engine reported it at its own memory limit in this episode (the commands' doing), else
  ``info["error"] == "sandbox"`` (the machine's: the agent loop scores nothing).
- ``submit`` grades out of the agent's reach (:mod:`lightswe.envs.grading`): the agent's change is read
  without running anything in its container, applied to a fresh container of the instance image
  (:meth:`SWEEnv.fresh_sandbox`), and the task's tests run there; reward 1.0 iff every FAIL_TO_PASS and
  PASS_TO_PASS test passes; ``terminated=True``, and ``step`` raises ``ResetNeeded`` until ``reset()`` (a
  second ``submit`` would reward the episode twice). ``info["grade"]`` is the typed
  :class:`~lightswe.envs.grading.Grade`; ``info["tests"]`` maps each test to its outcome, ``info["left_out"]``
  lists the paths of the change grading did not apply (with reasons), ``info["timed_out"]`` says the test run
  hit ``test_timeout`` (reward 0.0), ``info["reward_hack_suspected"]`` lists code that reacts to the test
  runner; with ``hack_policy="zero"`` such an episode's reward is 0.0 (``info["reward_zeroed"]``). When the
  machine fails while grading, ``step`` raises :class:`~lightswe.envs.grading.GradingError` (an
  ``InfrastructureError``: the episode has no reward; the agent loop records ``sandbox_error``).
  ``truncated`` comes from ``TimeLimit`` (``max_episode_steps`` at registration).
- Spaces: :class:`~lightswe.envs.spaces.UnicodeText` (``spaces.Text`` with a short ``repr`` and values that
  survive ``AsyncVectorEnv``'s shared memory) over :data:`CHARSET` (tab, newline and every printable
  character of the Basic Multilingual Plane); observations are sanitised into it (anything else becomes
  U+FFFD) and clipped to ``observation_space.max_length`` characters, the sandbox's output cap plus room for
  notes.
- ``render_mode="ansi"``: ``render()`` gives the task, the sandbox, the last grade and the agent's diff.

Example::

    import gymnasium as gym, lightswe
    env = gym.make("lightswe/SWE-v0")          # the embedded demo task (a real PyPI sdist with one bug)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(
        '<tool_calls>\\n{"name": "bash", "arguments": {"command": "git log --oneline"}}\\n</tool_calls>')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym
from lightswe.envs.grading import HACK_POLICIES, Grade, grade
from lightswe.envs.pool import PoolConfig, SandboxPool
from lightswe.envs.sandbox import Sandbox, SandboxConfig, SandboxError
from lightswe.envs.spaces import UnicodeText
from lightswe.envs.tool_calls import EXAMPLES, PARSERS, ToolCall, ToolCallFormatError
from lightswe.envs.tools import TOOL_NAMES, ToolError, run_tool
from lightswe.errors import UserInputError
from lightswe.tasks.datasets import load_tasks
from lightswe.tasks.instance import TaskInstance

CHARSET = "\t\n" + "".join(chr(i) for i in range(0x20, 0x10000) if chr(i).isprintable())
CHARSET_DESCRIPTION = "tab, newline and the printable characters of the Basic Multilingual Plane"
_ALLOWED = frozenset(CHARSET)
REPLACEMENT = "\ufffd"
_NOTE_ROOM = 2048  # characters for notes after capped output


def sanitize(text: str, max_length: int) -> str:
    """Map ``text`` into the observation space: unknown characters to U+FFFD, clipped with a note."""
    clean = text if _ALLOWED.issuperset(text) else "".join(c if c in _ALLOWED else REPLACEMENT for c in text)
    if len(clean) > max_length:
        note = f"\n[observation clipped to {max_length} characters; view a smaller range or filter the output]"
        clean = clean[: max_length - len(note)] + note
    return clean


def default_tasks_path() -> Path:
    return Path(str(resources.files("lightswe.tasks").joinpath("data/demo.jsonl")))


class SWEEnv(gym.Env[str, str]):
    # "ansi" only: the state is a repository, rendered as text (task, sandbox, the agent's diff, the last grade).
    # No "human" (Gymnasium's is a window refreshed on every step) and no "rgb_array" (a picture of this text
    # adds nothing); `lightswe view` is the human-facing view of whole episodes.
    metadata = {"render_modes": ["ansi"]}

    def __init__(self, tasks: str | Path | list[TaskInstance] | None = None, *, tool_format: str = "minimax",
                 sandbox_config: SandboxConfig | None = None, max_output_bytes: int = 16_384,
                 command_timeout: float = 60.0, test_timeout: float = 900.0, max_action_chars: int = 65_536,
                 image_for: Callable[[TaskInstance], str] | None = None, client=None,
                 pool: SandboxPool | None = None, pool_config: PoolConfig | None = None,
                 hack_policy: str = "keep", render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UserInputError(f"render_mode must be one of {self.metadata['render_modes']} or None, got "
                                 f"{render_mode!r}; fix: render_mode='ansi' (the state is a repository, rendered as "
                                 f"text) or None")
        self.render_mode = render_mode
        if tool_format not in PARSERS:
            raise UserInputError(f"tool_format must be one of {sorted(PARSERS)}, got {tool_format!r}")
        if hack_policy not in HACK_POLICIES:
            raise UserInputError(f"hack_policy must be one of {HACK_POLICIES} (keep: flag only; zero: reward 0.0 "
                                 f"for code that reacts to the test runner), got {hack_policy!r}")
        self.hack_policy = hack_policy
        if tasks is None:
            tasks = default_tasks_path()
        self.tasks: list[TaskInstance] = load_tasks(tasks) if isinstance(tasks, (str, Path)) else list(tasks)
        if not self.tasks or not all(isinstance(t, TaskInstance) for t in self.tasks):
            raise TypeError(f"tasks must be a JSONL path or a non-empty list of TaskInstance, got {tasks!r:.200}")
        self._by_id = {t.instance_id: t for t in self.tasks}
        self.tool_format = tool_format
        self._parse = PARSERS[tool_format]
        self.sandbox_config_base = sandbox_config or SandboxConfig()
        self.max_output_bytes = max_output_bytes
        self.command_timeout, self.test_timeout = command_timeout, test_timeout
        self._image_for = image_for
        self._client = client
        self._images: dict[str, str] = {}
        self.observation_space = UnicodeText(max_output_bytes + _NOTE_ROOM, min_length=0, charset=CHARSET,
                                             description=CHARSET_DESCRIPTION)
        self.action_space = UnicodeText(max_action_chars, min_length=0, charset=CHARSET,
                                        description=CHARSET_DESCRIPTION)
        # an env owns its pool unless one is passed in (then the caller closes it)
        self._own_pool = pool is None
        self.pool = pool if pool is not None else SandboxPool(pool_config, client=client)
        self.sandbox: Sandbox | None = None
        self.task: TaskInstance | None = None
        self.last_grade: Grade | None = None
        self._ended = False  # the episode was graded (submit): step() needs a reset() first

    # --------------------------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        task_id = options.get("task_id")
        if task_id is not None:
            if task_id not in self._by_id:
                raise UserInputError(f"unknown task_id {task_id!r}; this env has {len(self.tasks)} tasks; fix: "
                                     f"reset(options={{'task_id': ID}}) with an instance_id of them, e.g. "
                                     f"{list(self._by_id)[:5]}")
            self.task = self._by_id[task_id]
        else:
            self.task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        self._ended = False
        self._start_sandbox(self.task)
        self.last_grade = None
        return self._observe(self._statement(self.task)), {"task_id": self.task.instance_id,
                                                            "tools": list(TOOL_NAMES)}

    def step(self, action: str | ToolCall) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.sandbox is None or self.task is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self._ended:  # a second submit would grade (and reward) the same episode again
            raise gym.error.ResetNeeded("the episode ended with submit (terminated=True); call reset() before step()")
        if isinstance(action, ToolCall):
            calls = [action]
        elif isinstance(action, str):
            try:
                calls = self._parse(action)
            except ToolCallFormatError as err:
                return self._malformed(str(err))
        else:
            raise TypeError(f"action must be str (model text) or ToolCall, got {type(action).__name__}")
        if len(calls) != 1:
            found = "no tool call" if not calls else f"{len(calls)} tool calls"
            return self._malformed(f"found {found} in the action; call exactly one tool per step, e.g.:\n"
                                   f"{EXAMPLES[self.tool_format]}")
        call = calls[0]
        info: dict[str, Any] = {"tool": call.name}
        if call.name == "submit" and not set(call.arguments):
            # GradingError (the machine failed) propagates: an episode without a reward, never 0.0
            result = grade(self.sandbox, self.task, fresh=self.fresh_sandbox, release=self.pool.discard,
                           timeout=self.test_timeout,
                           hack_policy=self.hack_policy)
            self.last_grade, self._ended = result, True
            info.update(grade=result, tests=dict(result.tests), reason=result.reason, grade_s=result.duration_s,
                        timed_out=result.timed_out, left_out=list(result.left_out),
                        reward_hack_suspected=list(result.reward_hack_suspected), reward_zeroed=result.reward_zeroed,
                        model_patch=result.patch)
            if result.unmatched:
                info["unmatched"] = dict(result.unmatched)
            text = f"Submitted. Tests: {result.reason}. Reward {result.reward:.1f}."
            if result.left_out:
                shown = ", ".join(f"{x.path} ({x.reason})" for x in result.left_out[:5])
                text += f"\nNot graded ({len(result.left_out)}): {shown}"
            return self._observe(text), result.reward, True, False, info
        try:
            output = run_tool(self.sandbox, call).output
        except ToolError as err:
            info["error"] = "tool"
            output = str(err)
        except SandboxError as err:  # the container died: start over from the base commit
            # its own memory limit reached in this episode (the OOM killer took the runner, its restart or the
            # container's init; only the runner's death lets a later restart fail, e.g. on pids the agent's
            # leftovers took): the commands' doing, so an observation; else the machine's (info["error"]: the
            # loop scores nothing)
            own = self.sandbox.out_of_memory()
            self._start_sandbox(self.task, fresh=True)
            if own:
                output = (f"[the sandbox ran out of memory (its limit of {self.sandbox.config.mem_limit}): processes "
                          f"you started held it and the command runner could not run ({err}); the sandbox was "
                          "restarted from the base commit and earlier edits are lost]")
            else:
                info["error"] = "sandbox"
                output = f"[the sandbox failed ({err}) and was restarted from the base commit; earlier edits are lost]"
        return self._observe(output), 0.0, False, False, info

    def render(self) -> str | None:
        """``render_mode="ansi"``: the task, the sandbox, the last grade and the agent's changes so far
        (``git status`` and ``git diff`` against the base commit, capped like any observation); None otherwise."""
        if self.render_mode != "ansi":
            return None
        if self.task is None or self.sandbox is None:
            return "lightswe/SWE-v0: not reset yet (call reset())"
        head = [f"task {self.task.instance_id} ({self.task.repo}); sandbox {str(self.sandbox.container_id)[:12]} "
                f"from {self.sandbox.config.image}"]
        if self.last_grade is not None:
            head.append(f"submitted: reward {self.last_grade.reward:.1f} ({self.last_grade.reason})")
        base = self.sandbox.base_commit or "HEAD"
        # as the agent (the tree is theirs; never root in a repository whose .git/config the agent wrote)
        changes = self.sandbox.exec(f"git status --short && git diff {base}", timeout=30, user="agent")
        body = changes.output.strip() or "(no changes yet)"
        return self._observe("\n".join(head) + "\n--- the agent's changes (git status, git diff) ---\n" + body)

    def close(self) -> None:
        """Remove the episode's container and, when the env owns its pool, the pool's idle ones (waits)."""
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None
        if self._own_pool:
            self.pool.close()
            self.pool = SandboxPool(self.pool.config, client=self._client)  # a later reset() still works

    def sandbox_config(self, task: TaskInstance) -> SandboxConfig:
        """The configuration of ``task``'s sandboxes (its instance image, this env's limits)."""
        return replace(self.sandbox_config_base, image=self.image(task), max_output_bytes=self.max_output_bytes,
                       default_timeout=self.command_timeout, workdir="/testbed")

    def fresh_sandbox(self) -> Sandbox:
        """An untouched running container of the current task's image (e.g. for grading); the caller owns it:
        ``close()`` it (or ``env.pool.discard(box)`` to remove it in the background)."""
        if self.task is None:
            raise gym.error.ResetNeeded("call reset() before fresh_sandbox()")
        return self.pool.acquire(self.sandbox_config(self.task))

    # ------------------------------------------------------------------------------------------- helpers
    def image(self, task: TaskInstance) -> str:
        """The image a task's sandbox starts from (built and cached on first use)."""
        if task.instance_id not in self._images:
            if self._image_for is not None:
                self._images[task.instance_id] = self._image_for(task)
            else:
                from lightswe.tasks.images import ensure_instance_image

                self._images[task.instance_id] = ensure_instance_image(task, client=self._client)
        return self._images[task.instance_id]

    def _start_sandbox(self, task: TaskInstance, fresh: bool = False) -> None:
        """Swap the episode's container for an untouched one (``fresh`` is kept for callers; always fresh)."""
        config = self.sandbox_config(task)
        used, self.sandbox = self.sandbox, None
        if used is not None:
            self.pool.discard(used)
        self.sandbox = self.pool.acquire(config)

    def _statement(self, task: TaskInstance) -> str:
        return (f"{task.problem_statement.strip()}\n\nThe repository is checked out at /testbed. Find and fix the "
                "cause of this problem in the source code (not in the tests), then call submit.")

    def _observe(self, text: str) -> str:
        return sanitize(text, self.observation_space.max_length)

    def _malformed(self, message: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        return self._observe(f"[invalid action] {message}"), 0.0, False, False, {"error": "format"}
