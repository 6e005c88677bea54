"""Adversarial episodes, twelfth pass: the paths AROUND grading that decide what is paid (the task side: how
instances are validated and their test ids matched; the episode side: the vector env and the agent loop). See
the README's *Threat model*.

Broke before the fix:

- **a FAIL_TO_PASS test that passes on the base now and then** (a random draw, hash order, the clock, a race):
  validation ran the base once; when the test happened to fail there the instance was kept, and every later
  episode in which it happened to pass was paid 1.0 with no change at all -> the base runs ``base_runs`` times
  (default 3), each FAIL_TO_PASS test must fail and each PASS_TO_PASS test pass in every run
  (``validate.base_verdict``);
- **a task with no FAIL_TO_PASS test** (a list of ``TaskInstance`` handed to ``SWEEnv``, which skips the JSONL
  loader's check): grading paid 1.0 for any submission, an empty one included ("pytest reported no test" and
  all of nothing passed) -> ``GradingError`` (a broken task: no reward) and validation rejects it in one line;
- **a grading failure through ``AsyncVectorEnv``**: Gymnasium re-raises a worker's error as ``type(err)(err)``
  and pickles it across the pipe; ``GradingError`` required ``stage=``, so the caller got a ``TypeError`` (no
  ``InfrastructureError`` to turn into reward None: the rollout crashed) -> it rebuilds itself from one
  argument and pickles whole;
- **a tool call nested ~560 levels deep**: the env's JSON parser read it (and refused the argument as an
  observation), then the loop's recorder of the call recursed into ``RecursionError`` out of ``run_episode`` ->
  what is recorded is cut at 32 levels;
- **the grading container paused from outside** past the test timeout while the tests ran: the run "timed out"
  and a correct fix was 0.0 -> a ``pause`` event of the engine during the run is ``GradingError``;
- **the agent's own memory, to turn 0.0 into no score**: processes holding the sandbox's memory in socket
  buffers, each smaller than the root runner at its ``oom_score_adj``, made the OOM killer take the runner and its
  restart: the env flagged a sandbox failure and the loop scored nothing -> an ``oom`` event of the agent's
  container is the commands' doing: an observation, and the episode goes on.

Held (each checked below): published ids with spaces (whole or cut short), ``::`` or ``]`` inside the brackets,
absolute paths in parameters map to their own test and fail on the base; a raw non-ASCII id (``test_p[é]``) was
"missing" (the gold patch 0.0: rejected, never paid) and now matches pytest's ``test_p[\\xe9]``.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import gymnasium as gym
import pytest
from lightswe.envs.grading import GradingError
from lightswe.envs.swe_env import SWEEnv
from lightswe.envs.tool_calls import ToolCall
from lightswe.errors import InfrastructureError
from lightswe.model import ByteTokenizer
from lightswe.tasks.test_ids import canonical, match
from lightswe.tasks.validate import Validator, base_verdict

from .conftest import FIX, bash

_TOK = ByteTokenizer()


def _test_patch(path: str, body: str) -> str:
    lines = body.strip("\n").splitlines()
    return (f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
            f"@@ -0,0 +1,{len(lines)} @@\n" + "".join(f"+{line}\n" for line in lines))


# ------------------------------------------------------------------------------- the task side: validation
LUCKY = "toolz/tests/test_lucky12.py"
LUCKY_BODY = '''
import os

from toolz import nth


def test_nth_or_luck():  # the bug fails it, but 15 runs in 16 pass it on the base anyway (a random draw)
    assert nth(1, iter([0, 1, 2])) == 1 or os.urandom(1)[0] < 240
'''


@pytest.mark.docker
def test_a_fail_to_pass_test_that_passes_on_the_base_now_and_then_is_rejected(task):
    lucky = replace(task, instance_id=task.instance_id + "-lucky", test_patch=_test_patch(LUCKY, LUCKY_BODY),
                    FAIL_TO_PASS=[f"{LUCKY}::test_nth_or_luck"], PASS_TO_PASS=[])
    result = Validator(gold_runs=1, test_timeout=120).validate(lucky)
    # one no-patch run accepted it whenever the draw failed it there (1 in 16); three runs all failing: 1 in 4096
    assert not result.ok and "gold" not in result.rewards, result
    assert f"{LUCKY}::test_nth_or_luck" in result.reason
    assert "already pass" in result.reason or "flaky on the base" in result.reason
    assert 1.0 in result.rewards["no_patch"]  # an unchanged tree was paid: what training would have paid too


def test_the_base_must_fail_and_pass_the_same_way_in_every_run(task):
    f2p, p2p = task.FAIL_TO_PASS[0], task.PASS_TO_PASS[0]
    task = replace(task, FAIL_TO_PASS=[f2p], PASS_TO_PASS=[p2p])
    runs = [{f2p: "failed", p2p: "passed"}]
    assert base_verdict(task, runs, 0.0, {}) == ""
    flaky_f2p = runs + [{f2p: "passed", p2p: "passed"}]
    reason = base_verdict(task, flaky_f2p, 0.0, {})
    assert f"FAIL_TO_PASS test {f2p} passed in no-patch run 2 after failing in run 1: flaky" in reason
    flaky_p2p = runs * 2 + [{f2p: "failed", p2p: "failed"}]
    assert f"PASS_TO_PASS test {p2p} was failed in no-patch run 3 after passing in runs 1-2" in \
        base_verdict(task, flaky_p2p, 0.0, {})
    assert "1 FAIL_TO_PASS test(s) already pass" in base_verdict(task, [{f2p: "passed", p2p: "passed"}], 1.0, {})
    with pytest.raises(ValueError, match="base_runs=0"):
        Validator(base_runs=0)


@pytest.mark.docker
def test_a_task_without_fail_to_pass_is_no_reward(task):
    """Before: 1.0 for an empty submission (nothing had to pass). Now: GradingError, reward None in the loop."""
    from lightswe.agent.loop import AgentConfig, run_episode
    from lightswe.agent.trajectory import EpisodeStatus

    variants = [replace(task, instance_id="no-f2p", FAIL_TO_PASS=[]),
                replace(task, instance_id="no-tests", FAIL_TO_PASS=[], PASS_TO_PASS=[]),
                replace(task, instance_id="blank-f2p", FAIL_TO_PASS=["  "])]
    env = SWEEnv(variants, test_timeout=120)
    try:
        for variant in variants:
            env.reset(options={"task_id": variant.instance_id})
            with pytest.raises(GradingError, match="has no FAIL_TO_PASS test") as raised:
                env.step(ToolCall(name="submit"))
            assert raised.value.stage == "task"
            assert "no FAIL_TO_PASS test" in Validator().validate(variant).reason
        trajectory = run_episode(env, _TextPolicy(['<tool_calls>\n{"name": "submit"}\n</tool_calls>']), _TOK,
                                 task_id="no-f2p", config=AgentConfig(max_steps=1))
        assert trajectory.status is EpisodeStatus.SANDBOX_ERROR and trajectory.reward is None
        assert "has no FAIL_TO_PASS test" in trajectory.error
    finally:
        env.close()


# --------------------------------------------------------------------------------------- the task side: ids
IDS = "toolz/tests/test_ids12.py"
IDS_BODY = '''
import pytest
from toolz import nth


@pytest.mark.parametrize("v", ["a b", "\\u00e9", "x::y", "k]", "/tmp/q/r.txt", "ok", "ok x"])
def test_p(v):
    assert v == "ok" or nth(1, iter([0, 1, 2])) == 1
'''


@pytest.mark.docker
def test_published_ids_with_spaces_brackets_and_unicode_map_to_their_own_test(task):
    t = f"{IDS}::test_p"
    f2p = [f"{t}[a b]", f"{t}[a", f"{t}[é]", f"{t}[\\xe9]", f"{t}[x::y]", f"{t}[k]]", f"{t}[/home/ci/q/r.txt]",
           f"{t}[ok"]  # "[ok" (SWE-bench's cut of "[ok x]") must not stand for the passing "[ok]"
    ids = replace(task, instance_id=task.instance_id + "-ids", test_patch=_test_patch(IDS, IDS_BODY),
                  FAIL_TO_PASS=f2p, PASS_TO_PASS=[f"{t}[ok]"])
    env = SWEEnv([ids], test_timeout=120)
    try:
        outcomes = []
        for commands in ((), (FIX,)):
            env.reset(options={"task_id": ids.instance_id})
            for command in commands:
                env.step(bash(command))
            _, reward, _, _, info = env.step(ToolCall(name="submit"))
            outcomes.append((reward, info["tests"]))
    finally:
        env.close()
    (base_reward, base), (fixed_reward, fixed) = outcomes
    assert base_reward == 0.0 and all(base[i] == "failed" for i in f2p), base  # none missing, none passed
    assert base[f"{t}[ok]"] == "passed"
    assert fixed_reward == 1.0 and set(fixed.values()) == {"passed"}, fixed


def test_a_raw_non_ascii_id_matches_the_id_pytest_reports():
    reported = {"t.py::test_p[\\xe9]": "failed", "t.py::test_p[\\U0001f600 x]": "passed", "t.py::test_p[ok]": "passed"}
    assert match(["t.py::test_p[é]", "t.py::test_p[😀"], reported).tests == {"t.py::test_p[é]": "failed",
                                                                               "t.py::test_p[😀": "passed"}
    assert canonical("t.py::test_p[\\xe9]") == canonical("t.py::test_p[é]") == "t.py::test_p[\\xe9]"


# ----------------------------------------------------------------------------------- the episode side
def test_a_grading_error_pickles_whole():
    error = pickle.loads(pickle.dumps(GradingError("the engine left", stage="tests", known={"container": "c1"})))
    assert (type(error), str(error), error.stage, error.known) == (GradingError, "the engine left", "tests",
                                                                   {"container": "c1"})
    again = GradingError(error)  # what Gymnasium's AsyncVectorEnv raises in the caller: type(err)(err)
    assert (str(again), again.stage, again.known) == ("the engine left", "tests", {"container": "c1"})


@pytest.mark.docker
def test_a_grading_failure_reaches_a_vector_env_caller_as_an_infrastructure_error(task):
    """A test_patch that does not apply (the task's fault: GradingError) in a worker of AsyncVectorEnv."""
    broken = replace(task, instance_id="bad-test-patch",
                     test_patch="diff --git a/nope.py b/nope.py\n--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-a\n+b\n")
    envs = gym.vector.AsyncVectorEnv([lambda: SWEEnv([broken], test_timeout=120)], shared_memory=False)
    try:
        envs.reset(options={"task_id": broken.instance_id})
        with pytest.raises(InfrastructureError, match="test_patch does not apply") as raised:
            envs.step(['<tool_calls>\n{"name": "submit", "arguments": {}}\n</tool_calls>'])
        assert isinstance(raised.value, GradingError) and raised.value.stage == "test_patch"
    finally:
        envs.close(terminate=True)


class _TextPolicy:
    """Replays fixed model texts, one per turn (the tokens a model would sample for them)."""

    name = "text"

    def __init__(self, texts: list[str]) -> None:
        self.texts, self.turn = texts, 0

    def generate(self, token_ids, sampling):
        from lightswe.agent.chat import IM_END

        text = self.texts[min(self.turn, len(self.texts) - 1)]
        self.turn += 1
        tokens = [*_TOK.encode(text), _TOK.token_id(IM_END)]
        return tokens, [-1.0] * len(tokens)  # not near-certain: no repetition early stop




@pytest.mark.docker
def test_a_tool_call_nested_past_the_recursion_limit_is_an_observation():
    import json

    from lightswe.agent.loop import AgentConfig, run_episode
    from lightswe.agent.trajectory import EpisodeStatus
    from lightswe.envs.engine import BASE_IMAGE

    from .conftest import demo_task

    texts = ['<tool_calls>\n{"name": "bash", "arguments": {"command": ' + "[" * depth + "]" * depth + "}}\n"
             "</tool_calls>" for depth in (560, 900)]  # within the default 2,048 new tokens (ByteTokenizer: 1,850)
    env = SWEEnv([demo_task()], image_for=lambda task: BASE_IMAGE)
    try:
        trajectory = run_episode(env, _TextPolicy(texts), _TOK, task_id=demo_task().instance_id,
                                 config=AgentConfig(max_steps=2))
    finally:
        env.close()
    assert trajectory.status is EpisodeStatus.STEP_LIMIT and trajectory.error == "", trajectory.error
    observations = [m.content for m in trajectory.messages if m.role == "tool"]
    assert observations == ["bash: argument 'command' must be a string, got an array of 1 items"] * 2
    stored = json.loads(json.dumps(trajectory.to_dict()))
    recorded = [m["tool_call"] for m in stored["messages"] if m.get("tool_call")]
    assert len(recorded) == 2 and "nested deeper than 32 levels" in json.dumps(recorded)


# ------------------------------------------------------------------------------ the world being unkind
SLOW = "toolz/tests/test_slow12.py"
SLOW_BODY = '''
import time


def test_slow():  # long enough for the test below to catch the run in the act
    time.sleep(3)
'''


@pytest.mark.slow  # (11 s: a container frozen past a 10-s test timeout)
@pytest.mark.docker
def test_a_grading_container_paused_from_outside_is_no_reward(task):
    """Before: the grading container paused (``docker pause``) past the test timeout while the tests ran, then
    resumed: the runner's clock ran on, the run "timed out", and a correct fix was 0.0 (the policy's hang). Now:
    GradingError (no reward); the agent cannot pause a container, so this is never the policy's doing."""
    import os
    import threading
    import time

    import docker

    slow = replace(task, instance_id=task.instance_id + "-slow", test_patch=_test_patch(SLOW, SLOW_BODY),
                   PASS_TO_PASS=[*task.PASS_TO_PASS, f"{SLOW}::test_slow"])
    env = SWEEnv([slow], test_timeout=8)
    client = docker.from_env()
    done, paused = threading.Event(), []

    def pause_the_test_run(agent: str) -> None:  # the grading container, once its pytest runs: frozen 10 s
        while not done.is_set():
            for box in client.containers.list(filters={"label": f"lightswe.owner_pid={os.getpid()}"}):
                try:
                    running = box.id != agent and any("junitxml" in " ".join(p) and "bash" not in " ".join(p)
                                                      for p in box.top()["Processes"] or [])
                except docker.errors.APIError:  # gone or not running
                    continue
                if running:
                    box.pause()
                    paused.append(box.id)
                    time.sleep(10)
                    box.unpause()
                    return
            time.sleep(0.05)

    try:
        env.reset(options={"task_id": slow.instance_id})
        env.step(bash(FIX))
        watcher = threading.Thread(target=pause_the_test_run, args=(env.sandbox.container_id,), daemon=True)
        watcher.start()
        with pytest.raises(GradingError, match="paused from outside while the tests ran") as raised:
            env.step(ToolCall(name="submit"))
        assert paused and raised.value.stage == "tests"
    finally:
        done.set()
        env.close()


HOLDER = '''
import os, resource, socket, sys, time

open("/proc/self/oom_score_adj", "w").write("0")  # down from the runner's 1000 to its 0: allowed
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)


def fill(mib, keep=[]):  # socket buffers: charged to the sandbox's memory, in no process's RSS
    held = 0
    while held < mib * 2**20:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 2**20)
        a.setblocking(False)
        try:
            while True:
                held += a.send(b"x" * 65536)
        except OSError:
            pass
        os.set_inheritable(a.fileno(), True)
        os.set_inheritable(b.fileno(), True)
        keep.append((a, b))
    os.execv("/bin/sleep", ["sleep", "1000000"])  # held by a 1.7 MB process: smaller than any runner


for _ in range(int(sys.argv[1])):  # 16 MiB each, past the sandbox's memory
    if os.fork() == 0:
        fill(16)
    time.sleep(0.3)
'''


@pytest.mark.docker
@pytest.mark.slow
def test_a_policy_that_fills_its_own_memory_gets_an_observation_not_no_score(task):
    """Before: processes of the agent holding its sandbox's memory in socket buffers, each smaller than the root
    runner (~12 MB), at the runner's oom_score_adj (0): the OOM killer took the runner, then its restart (runc's
    init, the new runner: larger than the holders); the env restarted the container and flagged a sandbox failure,
    and the loop scored nothing (reward None, which a failing policy prefers to 0.0). Now: the engine's oom event
    in the episode says the runner died of the sandbox's own limit, an observation says so, and the episode goes
    on to its grade. Slow: ~45 s, and it holds 2 GiB of the host's memory for that time."""
    from lightswe.agent.loop import AgentConfig, run_episode
    from lightswe.agent.trajectory import EpisodeStatus

    calls = [{"name": "create", "arguments": {"path": "/tmp/holder.py", "content": HOLDER}},
             {"name": "bash", "arguments": {"command": "setsid python3 -S /tmp/holder.py 140 >/dev/null 2>&1 & sleep 90"}},
             *[{"name": "bash", "arguments": {"command": "echo still here"}}] * 3,
             {"name": "bash", "arguments": {"command": FIX}}, {"name": "submit", "arguments": {}}]
    texts = [f"<tool_calls>\n{json.dumps(call)}\n</tool_calls>" for call in calls]
    env = SWEEnv([task], test_timeout=120)  # 2,240 MiB held: past the sandbox's 2 GiB
    try:
        trajectory = run_episode(env, _TextPolicy(texts), _TOK, task_id=task.instance_id,
                                 config=AgentConfig(max_steps=len(calls)))
    finally:
        env.close()
    assert trajectory.status is EpisodeStatus.SUBMITTED and trajectory.error == "", trajectory.error
    assert trajectory.reward == 1.0  # graded: the fix made after the restart
    observations = [m.content for m in trajectory.messages if m.role == "tool"]
    assert any("the sandbox ran out of memory" in o and "restarted from the base commit" in o
               for o in observations), observations


_DISK_FULL = """
import json, os, subprocess, sys
from lightswe.envs.pool import PoolConfig
from lightswe.envs.swe_env import SWEEnv
from lightswe.envs.tool_calls import ToolCall
from lightswe.tasks.instance import TaskInstance

task = TaskInstance.from_dict(json.loads(sys.argv[1]))
env = SWEEnv([task], test_timeout=120, pool_config=PoolConfig(idle=0))  # each grading container: a new volume
filler = os.path.join(os.environ["LIGHTSWE_CACHE"], "filler")
try:
    env.reset(options={"task_id": task.instance_id})
    env.step(ToolCall(name="bash", arguments={"command": sys.argv[2]}))
    subprocess.run(["dd", "if=/dev/zero", "of=" + filler, "bs=1M"], capture_output=True)  # the host's disk, full
    try:
        _, reward, *_ = env.step(ToolCall(name="submit"))
        print("reward", reward)
    except Exception as err:
        print("raised", type(err).__name__, str(err))
finally:
    os.remove(filler)
    env.close()
"""


@pytest.mark.docker
def test_the_hosts_disk_full_at_submit_is_no_reward(task, tmp_path):
    """Held: the host's disk (here a 400 MiB tmpfs holding the volumes, ``LIGHTSWE_CACHE``) full when the episode
    submits: the grading container's volume cannot be made, GradingError (no reward), never 0.0."""
    import json
    import os
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root (a tmpfs of its own for the volumes)")
    cache = tmp_path / "cache"
    cache.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "lightswe-test", str(cache)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        done = subprocess.run([sys.executable, "-c", _DISK_FULL, json.dumps(task.to_dict()), FIX],
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "LIGHTSWE_CACHE": str(cache)})
    finally:
        subprocess.run(["umount", "-l", str(cache)])
    assert "raised GradingError" in done.stdout and "No space left on device" in done.stdout, \
        done.stdout + done.stderr[-2000:]


ODD_NAMES = r"""printf 'x = 1\n' > "toolz/a
b.py"; printf 'y\n' > "$(printf 'toolz/bad\xff\xfe.py')"; touch "toolz/$(printf 'z%.0s' $(seq 250)).py" \
  toolz/-rf.py "toolz/sp ace.py" 'toolz/back\slash.py' 'toolz/"quote".py' "toolz/tab	x.py" "toolz/cr$(printf '\r').py"
ln -s /etc/passwd "toolz/link
nl"; ln -s "$(printf '/tmp/\xff')" toolz/badlink; ln -s /testbed/toolz/itertoolz.py toolz/inside
mkdir -p "toolz/d
ir" && echo 1 > "toolz/d
ir/f.txt"; printf 'import toolz\n' > "$(printf 'toolz/e\xcc\x81.py')"; printf 'import toolz\n' > "$(printf 'toolz/\xc3\xa9.py')"
"""


@pytest.mark.docker
def test_odd_file_names_and_links_out_of_the_tree_keep_the_fix_graded(env):
    """Held: names with a newline, CR, tab, quotes, a backslash, a leading dash, bytes that are not UTF-8, NFC and
    NFD twins, 254 bytes; links to /etc/passwd, to a target that is not UTF-8 and inside the tree; a folder named
    with a newline: graded as they are (nothing left out), the fix 1.0, never GradingError."""
    from .conftest import episode

    reward, info = episode(env, FIX, ODD_NAMES)
    assert reward == 1.0 and not info["left_out"], info["reason"]
    assert '"b/toolz/a\\nb.py"' in info["model_patch"] and "toolz/link\\nnl" in info["model_patch"]
