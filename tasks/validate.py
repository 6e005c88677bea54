"""Validation of instances through the real environment: no patch -> reward 0.0, gold patch -> reward 1.0.

Each instance goes through ``lightswe/SWE-v0`` (:class:`lightswe.envs.swe_env.SWEEnv`) exactly as an agent's
episode would: ``reset`` starts a sandbox from the instance image (built on first use), ``submit`` grades with
the environment's own grader (tests restored, run as the agent user, JUnit XML cross-checked with the exit
code). The checks:

- submit with no change: reward 0.0, every FAIL_TO_PASS test not passing, every PASS_TO_PASS test passing;
- warm reset, the gold ``patch`` applied with ``git apply`` (a patch that does not apply is an error), submit:
  reward 1.0; repeated ``gold_runs`` times, with identical per-test outcomes (a test whose outcome changes
  between runs is flaky: the instance is rejected, never silently kept).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lightswe.tasks.instance import TaskInstance


@dataclass(kw_only=True, slots=True)
class Validation:
    instance_id: str
    ok: bool
    reason: str = ""
    rewards: dict[str, list[float]] = field(default_factory=dict)  # "no_patch"/"gold" -> rewards seen
    flaky: list[str] = field(default_factory=list)
    unmatched: dict[str, str] = field(default_factory=dict)  # published ids that matched no test -> why
    image: str = ""
    seconds: float = 0.0


def error_reason(err: BaseException, width: int = 2500) -> str:
    """Why an instance could not be validated, cause first: the error's own first line (which names the
    failing step and command) and its last lines (where a failing install or runner says why), never the
    middle of a traceback."""
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(text) > width and len(lines) > 1:
        text = lines[0] + "\n...\n" + "\n".join(lines[-12:])[-(width - len(lines[0])):]
    return f"{type(err).__name__}: {text}"


class Validator:
    """Validates many instances, reusing one SWEEnv (and so warm sandboxes and its image cache)."""

    def __init__(self, *, gold_runs: int = 2, test_timeout: float = 600.0, client=None) -> None:
        self.gold_runs, self.test_timeout, self.client = gold_runs, test_timeout, client

    def validate(self, instance: TaskInstance) -> Validation:
        from lightswe.envs.swe_env import SWEEnv
        from lightswe.envs.tool_calls import ToolCall

        start = time.perf_counter()
        result = Validation(instance_id=instance.instance_id, ok=False)
        env = SWEEnv([instance], test_timeout=self.test_timeout, client=self.client)
        submit = ToolCall(name="submit", arguments={})
        try:
            env.reset(options={"task_id": instance.instance_id})
            result.image = env.sandbox.config.image
            _, reward, terminated, _, info = env.step(submit)
            result.rewards["no_patch"] = [reward]
            tests = info.get("tests", {})
            still_passing = [t for t in instance.FAIL_TO_PASS if tests.get(t) == "passed"]
            broken = [t for t in instance.PASS_TO_PASS if tests.get(t) != "passed"]
            if reward != 0.0 or still_passing or broken:
                parts = []
                if broken:  # the cause first: a collection error or a runner that reported nothing
                    cause = str(info.get("reason", ""))
                    if cause.startswith(("collection error", "pytest reported no test", "the test command")):
                        parts.append(cause)
                    parts.append(f"{len(broken)} PASS_TO_PASS test(s) do not pass, e.g. {broken[0]} "
                                 f"({tests.get(broken[0])}{': ' + info['unmatched'][broken[0]] if broken[0] in info.get('unmatched', {}) else ''})")
                if still_passing:
                    parts.append(f"{len(still_passing)} FAIL_TO_PASS test(s) already pass, e.g. {still_passing[0]}")
                result.reason = f"without the fix: reward {reward}: " + "; ".join(parts)
                result.unmatched = dict(info.get("unmatched") or {})
                return result
            seen: list[dict[str, str]] = []
            result.rewards["gold"] = []
            for _ in range(self.gold_runs):
                env.reset(options={"task_id": instance.instance_id})
                applied = env.sandbox.exec("git apply --whitespace=nowarn -", timeout=60, user="agent",
                                           stdin=instance.patch.encode())
                if applied.exit_code != 0:
                    result.reason = f"the gold patch does not apply: {applied.output.strip()[-400:]}"
                    return result
                _, reward, _, _, info = env.step(submit)
                result.rewards["gold"].append(reward)
                seen.append(dict(info.get("tests", {})))
                if reward != 1.0:
                    result.reason = f"with the gold patch: reward {reward}: {info.get('reason', '')}"
                    if info.get("unmatched"):
                        result.unmatched = dict(info["unmatched"])
                    return result
            result.flaky = sorted(t for t in seen[0] if len({s.get(t) for s in seen}) > 1)
            if result.flaky:
                result.reason = f"flaky tests across gold runs: {result.flaky[:5]}"
                return result
            result.unmatched = dict(info.get("unmatched") or {})
            result.ok, result.reason = True, "no patch 0.0, gold patch 1.0"
            return result
        except Exception as err:  # noqa: BLE001 - any failure rejects this instance, never the whole build
            result.reason = error_reason(err)
            return result
        finally:
            env.close()
            result.seconds = time.perf_counter() - start
