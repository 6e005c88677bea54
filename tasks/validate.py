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
    image: str = ""
    seconds: float = 0.0


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
                result.reason = (f"without the fix: reward {reward}, {len(still_passing)} FAIL_TO_PASS test(s) pass "
                                 f"(e.g. {still_passing[:1]}), {len(broken)} PASS_TO_PASS test(s) do not pass "
                                 f"(e.g. {broken[:1]}: {tests.get(broken[0]) if broken else ''})")
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
                    result.reason = f"with the gold patch: reward {reward} ({info.get('reason', '')})"
                    return result
            result.flaky = sorted(t for t in seen[0] if len({s.get(t) for s in seen}) > 1)
            if result.flaky:
                result.reason = f"flaky tests across gold runs: {result.flaky[:5]}"
                return result
            result.ok, result.reason = True, "no patch 0.0, gold patch 1.0"
            return result
        except Exception as err:  # noqa: BLE001 - any failure rejects this instance, never the whole build
            result.reason = f"{type(err).__name__}: {str(err)[:600]}"
            return result
        finally:
            env.close()
            result.seconds = time.perf_counter() - start
