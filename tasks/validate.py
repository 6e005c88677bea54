"""Validation of instances through the real environment: no patch -> reward 0.0, gold patch -> reward 1.0.

Each instance goes through ``lightswe/SWE-v0`` (:class:`lightswe.envs.swe_env.SWEEnv`) exactly as an agent's
episode would: ``reset`` starts a sandbox from the instance image (built on first use), ``submit`` grades with
the environment's own grader (tests restored, run as the agent user, JUnit XML cross-checked with the exit
code). The checks:

- the instance names at least one FAIL_TO_PASS test (with none, every change is graded as a fix);
- submit with no change, ``base_runs`` times (each a fresh container): reward 0.0, every FAIL_TO_PASS test not
  passing and every PASS_TO_PASS test passing *in every run*. One run was not enough: a FAIL_TO_PASS test that
  passes on the base some of the time (a random draw, hash order, the clock, a race) failed once, the instance
  was kept, and later episodes were paid 1.0 without a fix whenever it passed (:func:`base_verdict`);
- warm reset, the gold ``patch`` applied with ``git apply`` (a patch that does not apply is an error), submit:
  reward 1.0; repeated ``gold_runs`` times, with identical per-test outcomes (a test whose outcome changes
  between runs is flaky: the instance is rejected, never silently kept).

A test that passes on the base only after some date, or only with the network, cannot be seen by any number of
runs today (grading has no network; the clock is the host's): such tasks are not detected here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lightswe.errors import UserInputError
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


def base_verdict(instance: TaskInstance, runs: list[dict[str, str]], reward: float, info: dict) -> str:
    """Why the base (no change) disqualifies ``instance`` after the no-patch runs so far, or "" when it does not.

    ``runs``: each run's test id -> outcome (``info["tests"]`` of a no-patch submit), the latest last;
    ``reward``/``info``: the latest run's. The base must fail every FAIL_TO_PASS test and pass every
    PASS_TO_PASS test in *every* run: a FAIL_TO_PASS test that passes in any run pays an unchanged tree that
    often, and a PASS_TO_PASS test that fails in any run is flaky. One line, the cause first.
    """
    tests, n = runs[-1], len(runs)
    still_passing = [t for t in instance.FAIL_TO_PASS if tests.get(t) == "passed"]
    broken = [t for t in instance.PASS_TO_PASS if tests.get(t) != "passed"]
    earlier = "run 1" if n == 2 else f"runs 1-{n - 1}"  # they passed this check, or validation stopped there
    if n > 1 and still_passing:  # it failed in every earlier run: a fix is not needed to pass it
        return (f"without the fix: FAIL_TO_PASS test {still_passing[0]} passed in no-patch run {n} after failing in "
                f"{earlier}: flaky on the base (a random draw, hash or test order, the clock, a race), so an "
                f"unchanged tree would sometimes be paid 1.0 ({len(still_passing)} such test(s))")
    if n > 1 and broken:
        return (f"without the fix: PASS_TO_PASS test {broken[0]} was {tests.get(broken[0])} in no-patch run {n} after "
                f"passing in {earlier}: flaky on the base ({len(broken)} such test(s))")
    if reward == 0.0 and not still_passing and not broken:
        return ""
    parts = []
    if broken:  # the cause first: a collection error or a runner that reported nothing
        cause = str(info.get("reason", ""))
        if cause.startswith(("collection error", "pytest reported no test", "the test command")):
            parts.append(cause)
        unmatched = info.get("unmatched", {})
        parts.append(f"{len(broken)} PASS_TO_PASS test(s) do not pass, e.g. {broken[0]} "
                     f"({tests.get(broken[0])}{': ' + unmatched[broken[0]] if broken[0] in unmatched else ''})")
    if still_passing:
        parts.append(f"{len(still_passing)} FAIL_TO_PASS test(s) already pass, e.g. {still_passing[0]}")
    if not parts:
        parts.append(str(info.get("reason", "")))
    return f"without the fix: reward {reward}: " + "; ".join(parts)


class Validator:
    """Validates many instances, reusing one SWEEnv (and so warm sandboxes and its image cache)."""

    def __init__(self, *, gold_runs: int = 2, base_runs: int = 3, test_timeout: float = 600.0,
                 client=None) -> None:
        if gold_runs < 1 or base_runs < 1:
            raise UserInputError(f"gold_runs={gold_runs}, base_runs={base_runs}: each must be >= 1; fix: e.g. "
                                 "gold_runs=2, base_runs=3")
        self.gold_runs, self.base_runs = gold_runs, base_runs
        self.test_timeout, self.client = test_timeout, client

    def validate(self, instance: TaskInstance) -> Validation:
        from lightswe.envs.swe_env import SWEEnv
        from lightswe.envs.tool_calls import ToolCall

        start = time.perf_counter()
        result = Validation(instance_id=instance.instance_id, ok=False)
        env = SWEEnv([instance], test_timeout=self.test_timeout, client=self.client)
        submit = ToolCall(name="submit", arguments={})
        try:
            if not [t for t in instance.FAIL_TO_PASS if t.strip()]:
                result.reason = ("no FAIL_TO_PASS test: nothing a fix must make pass, so every change would be "
                                 "paid; fix: list the tests that fail before the fix and pass after it")
                return result
            base_seen: list[dict[str, str]] = []
            result.rewards["no_patch"] = []
            for _ in range(self.base_runs):
                env.reset(options={"task_id": instance.instance_id})
                result.image = env.sandbox.config.image
                _, reward, _, _, info = env.step(submit)
                result.rewards["no_patch"].append(reward)
                base_seen.append(dict(info.get("tests", {})))
                problem = base_verdict(instance, base_seen, reward, info)
                if problem:
                    result.reason = problem
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
