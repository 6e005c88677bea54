"""Grading under load (grade6): a correct fix failed by its own test's deadline on a starved host, and the
grading slots' rule (how many, in what order, how long, never held by the dead). Real engine, real load (a
burner container this module starts and always removes), real processes holding real ``flock`` s.

Broke before the fix:

- **a correct fix scored 0.0 on a starved host**: its tests carry deadlines of their own (``signal.alarm``, an
  elapsed-time assertion, a subprocess timeout, a future's timeout); under load they failed while the run as a
  whole ended in time, and only a timed-out run was ever judged starved -> a failing run starved in every
  second of it (counters sampled during the run) is rerun and, starved twice, the machine's failure;
- **admission**: 4 CPUs of grading quota per CPU left each grading exactly the starvation threshold (any other
  load made spinning hangs "starved"); the wait for a slot was a free-for-all (a late grading could overtake an
  early one, which then waited past its bound); a grading's patience was its own timeout, so gradings of mixed
  timeouts failed innocent ones -> 2 per CPU, a FIFO ticket, patience from the holders' declared holds.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from lightswe.envs import starvation

from .conftest import FIX, bash, start

# ------------------------------------------------------------------------------------------- the slots' rule


def _holder(slot_dir: Path, cpus: int, hold_s: float, sleep_s: float, log: Path, name: str) -> subprocess.Popen:
    """Another process asking for ``cpus`` slots of a 1-CPU host (declaring ``hold_s``), holding them
    ``sleep_s`` seconds; it appends "<name> <monotonic time>" to ``log`` once admitted."""
    code = ("import pathlib, sys, time; from lightswe.envs import starvation\n"
            f"with starvation.admitted({cpus}, hold_s={hold_s}, slot_dir=pathlib.Path({str(slot_dir)!r}),\n"
            "                         host_cpus=1):\n"
            f"    open({str(log)!r}, 'a').write('{name} %f\\n' % time.monotonic())\n"
            f"    time.sleep({sleep_s})\n")
    return subprocess.Popen([sys.executable, "-c", code])


def _admitted(log: Path, name: str, timeout: float = 30.0) -> float:
    """When ``name`` was admitted (monotonic), waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            who, at = line.split()
            if who == name:
                return float(at)
        time.sleep(0.02)
    raise AssertionError(f"{name} was never admitted: {log.read_text() if log.exists() else ''}")


def _tickets(slot_dir: Path, count: int) -> None:
    """Wait until ``count`` gradings hold a ticket (wait in the queue)."""
    deadline = time.monotonic() + 30
    while len(list((slot_dir / "queue").glob("[0-9]*"))) < count:
        assert time.monotonic() < deadline, "no ticket taken"
        time.sleep(0.02)


def test_two_cpus_of_grading_quota_per_cpu_leave_each_grading_twice_the_threshold():
    """The rule in numbers: gradings alone leave each at least 1 / GRADINGS_PER_CPU of its quota, twice what the
    starvation judgment calls starved; each weighs in proportion to its quota."""
    assert 1 / starvation.GRADINGS_PER_CPU >= 2 * starvation.GOT_AT_MOST
    assert starvation.grading_shares(2.0) == 2 * starvation.grading_shares(1.0) == 2 * 8192
    assert starvation.grading_shares(0.5) == 8192 and starvation.grading_shares(64) == 262_144


def test_the_wait_for_a_slot_is_first_come_first_served(tmp_path):
    """Broke: a grading needing 2 CPUs waited while 1-CPU gradings that came later took each slot as it came
    free (all or nothing for it, first come for them): it could wait past its bound. Now the oldest ticket
    goes first: here A (2 CPUs, asked first) is admitted before B (1 CPU) although a slot came free for B first.
    """
    log = tmp_path / "log"
    first = _holder(tmp_path, 1, 5, 0.6, log, "h1")  # two 1-CPU holders of a 1-CPU host's two slots
    second = _holder(tmp_path, 1, 5, 1.6, log, "h2")
    procs = [first, second]
    try:
        _admitted(log, "h1"), _admitted(log, "h2")
        procs.append(_holder(tmp_path, 2, 5, 0.3, log, "a"))
        _tickets(tmp_path, 1)
        procs.append(_holder(tmp_path, 1, 5, 0.1, log, "b"))
        _tickets(tmp_path, 2)
        a, b = _admitted(log, "a"), _admitted(log, "b")
        assert a < b, log.read_text()  # h1's slot came free at 0.6 s: B would have taken it before A
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)


def test_a_dead_waiter_or_holder_keeps_nothing(tmp_path):
    """No slot and no place in the queue is kept by a dead process: the holder and the waiter at the head of
    the queue are SIGKILLed; the next waiter gets its slots at once (the kernel gave back their flocks, the dead
    waiter's ticket is removed)."""
    log = tmp_path / "log"
    holder = _holder(tmp_path, 2, 60, 60, log, "holder")
    head = None
    try:
        _admitted(log, "holder")
        head = _holder(tmp_path, 2, 60, 60, log, "head")
        _tickets(tmp_path, 1)
        with pytest.raises(starvation.AdmissionError, match="came free in 0.3 s"):
            with starvation.admitted(1, hold_s=60, wait_s=0.3, slot_dir=tmp_path, host_cpus=1):
                pytest.fail("admitted past a live holder")
        head.kill()
        head.wait(timeout=30)
        holder.kill()
        holder.wait(timeout=30)
        started = time.monotonic()
        with starvation.admitted(2, hold_s=60, wait_s=5, slot_dir=tmp_path, host_cpus=1):
            assert time.monotonic() - started < 1.0
        assert not list((tmp_path / "queue").glob("[0-9]*"))  # the dead waiter's ticket is gone, ours too
    finally:
        for proc in (holder, head):
            if proc is not None:
                proc.kill()
                proc.wait(timeout=30)


def test_a_waiter_is_patient_by_the_holders_holds_not_its_own_timeout(tmp_path, monkeypatch):
    """Broke: gradings of mixed timeouts share the slots, but a waiter waited only by its own timeout (2 (t + 30)
    + 30 s: 210 s at 60 s, behind holders of 900 s that may hold theirs 1,860 s): GradingError for an innocent
    episode. Now a waiter gives up only when nothing moved for longer than the longest hold declared (plus the
    grace, 0.5 s here): a short grading behind a long one is admitted; a holder stuck past its word is reported."""
    monkeypatch.setattr(starvation, "EXEC_GRACE_S", 0.5)
    log = tmp_path / "log"
    long_one = _holder(tmp_path, 2, 3.0, 2.0, log, "long")  # declares 3 s, holds 2 s
    try:
        _admitted(log, "long")
        started = time.monotonic()
        with starvation.admitted(1, hold_s=0.2, slot_dir=tmp_path, host_cpus=1):  # its own bound: 0.2 + 0.5 s
            assert time.monotonic() - started > 1.0
    finally:
        long_one.kill()
        long_one.wait(timeout=30)
    stuck = _holder(tmp_path, 2, 0.5, 60, log, "stuck")  # declares 0.5 s, holds a minute
    try:
        _admitted(log, "stuck")
        started = time.monotonic()
        with pytest.raises(starvation.AdmissionError, match="a grading is stuck"):
            with starvation.admitted(1, hold_s=0.2, slot_dir=tmp_path, host_cpus=1):
                pytest.fail("admitted past a holder")
        assert 0.9 < time.monotonic() - started < 10
    finally:
        stuck.kill()
        stuck.wait(timeout=30)


def test_the_windows_that_clear_the_host_of_a_failing_run():
    """The judgment of a failing run over real samples of this process's own cgroup, then over made series: a
    failing run starved overall is the host's unless one window of WINDOW_S clears it -- the code wanted no CPU
    (a sleep) or the host had CPU idle; a lucky second with its CPU does not, nor do idle edges (the harness)."""
    folder = next((root / line.strip()[3:].lstrip("/") for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if line.startswith("0::") for root in starvation.CGROUP_ROOTS
                   if (root / line.strip()[3:].lstrip("/") / "cpu.pressure").is_file()), None)
    if folder is None:
        pytest.skip("no cgroup-v2 counters for this process")
    with starvation.sampled(folder, every_s=0.05) as series:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            pass
    assert series.complete and len(series.samples) >= 5 and series.share(1.0).wall_s >= 0.5

    def made(steps: list[tuple[float, float, float]]) -> starvation.CpuSeries:
        """(cpu, waiting, host idle) per 0.5 s."""
        samples, cpu, wait, idle = [starvation.CpuSample(0.0, 0.0, 0.0, 0.0)], 0.0, 0.0, 0.0
        for i, (c, w, h) in enumerate(steps, 1):
            cpu, wait, idle = cpu + c, wait + w, idle + h
            samples.append(starvation.CpuSample(cpu, wait, i * 0.5, idle))
        return starvation.CpuSeries(samples=samples, complete=True)

    starved, asleep = (0.02, 0.48, 0.0), (0.0, 0.0, 0.0)
    assert starvation.starved_failure(made([starved] * 12), 1.0, timed_out=False) is not None
    slept = made([starved] * 5 + [asleep] * 3 + [starved] * 4)  # 1.5 s asleep: starved overall
    assert slept.share(1.0).starved and slept.cleared(1.0) is not None
    assert starvation.starved_failure(slept, 1.0, timed_out=False) is None
    assert starvation.starved_failure(slept, 1.0, timed_out=True) is not None  # a timeout: the whole run's
    lucky = made([starved] * 5 + [(0.3, 0.2, 0.0)] * 2 + [starved] * 5)  # a second with its CPU
    assert lucky.share(1.0).starved and starvation.starved_failure(lucky, 1.0, timed_out=False) is not None
    spare = made([starved] * 5 + [(0.02, 0.48, 0.2)] * 2 + [starved] * 5)  # the host left CPU idle
    assert spare.share(1.0).starved and starvation.starved_failure(spare, 1.0, timed_out=False) is None
    edges = made([asleep] * 3 + [starved] * 12 + [asleep] * 3)  # the harness before and after the command
    assert starvation.starved_failure(edges, 1.0, timed_out=False) is not None
    assert starvation.starved_failure(replace(made([starved] * 12), complete=False), 1.0, timed_out=False) is None


# -------------------------------------------------------------------------- a failing run on a starved host

MARKER = "test_deadlines"
# the task's tests with deadlines of their own, each a kind; about 0.2 s of CPU each on an idle host
DEADLINES_PY = """import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from toolz import nth

WORK = "sum(i * i for i in range(5000000))"


def work():
    eval(WORK)
    return nth(2, iter("ABCDE"))


def test_alarm():
    def late(*_):
        raise TimeoutError("the alarm rang")
    signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, 1.5)
    try:
        assert work() == "C"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def test_elapsed():
    started = time.monotonic()
    assert work() == "C"
    assert time.monotonic() - started < 1.5


def test_subprocess_timeout():
    code = "from toolz import nth; " + WORK + "; assert nth(2, iter('ABCDE')) == 'C'"
    subprocess.run([sys.executable, "-c", code], timeout=3, check=True)


def test_future_timeout():
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(work).result(timeout=1.5) == "C"
"""
DEADLINES = (f"diff --git a/toolz/tests/{MARKER}.py b/toolz/tests/{MARKER}.py\nnew file mode 100644\n--- /dev/null\n"
             f"+++ b/toolz/tests/{MARKER}.py\n@@ -0,0 +1,{len(DEADLINES_PY.splitlines())} @@\n"
             + "".join(f"+{line}\n" for line in DEADLINES_PY.splitlines()))
KINDS = ["test_alarm", "test_elapsed", "test_subprocess_timeout", "test_future_timeout"]
SLEEPS = ("sed -i 's/return next(itertools.islice(seq, n + 1, None))/"
          "import time; time.sleep(2); return next(itertools.islice(seq, n, None))/' toolz/itertoolz.py")
# spins 3 s of CPU in Python (a signal handler still runs), then answers right
SPINS = ("printf 'import time\\n\\ndef spin(seconds):\\n    end = time.thread_time() + seconds\\n"
         "    while time.thread_time() < end:\\n        pass\\n' > toolz/_slow.py && "
         "sed -i 's/return next(itertools.islice(seq, n + 1, None))/"
         "from toolz._slow import spin; spin(3); return next(itertools.islice(seq, n, None))/' toolz/itertoolz.py")


def _deadline_task(task, kinds: list[str]):
    return replace(task, instance_id=task.instance_id + "-deadlines", test_patch=DEADLINES, PASS_TO_PASS=[],
                   FAIL_TO_PASS=[f"toolz/tests/{MARKER}.py::{kind}" for kind in kinds])


def _testing() -> bool:
    """Whether a process of this host runs the deadline tests (the grading container's pytest)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


@contextlib.contextmanager
def burner(shares: int = 262_144, loops: int = 2):
    """A real loaded host while a grading runs the deadline tests: a container of ``loops`` busy loops at CPU
    weight ``shares`` (default: the engine's highest, 32 times a grading's), running only while a process of the
    host runs them (paused otherwise, so the rest of the grading is not slowed), removed at the end whatever
    happens. Yields a list that receives the seconds it burned."""
    import docker

    client = docker.from_env()
    hog = client.containers.run(
        "lightswe/base:bookworm", ["sh", "-c", " ".join(["while :; do :; done &"] * loops) + " wait"],
        detach=True, remove=True, network_mode="none", cpu_shares=shares, labels={"lightswe.test": "grade6-burner"})
    stop, burned = threading.Event(), []

    def switch(on: bool) -> None:
        for attempt in range(20):  # the engine answers 500 now and then under load: the burner must follow
            try:
                (client.api.unpause if on else client.api.pause)(hog.id)
                return
            except docker.errors.APIError:
                if attempt == 19:
                    raise
                time.sleep(0.1)

    def watch() -> None:
        running, since = False, 0.0
        while not stop.is_set():
            now = _testing()
            if now != running:
                switch(now)
                if not now:
                    burned.append(round(time.monotonic() - since, 1))
                running, since = now, time.monotonic()
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    try:
        switch(False)
        thread.start()
        yield burned
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=30)
        client.api.remove_container(hog.id, force=True)


@pytest.mark.slow  # (40 s: three gradings of ~15 s under a burner; the rule itself runs in the default suite on real
# and made cgroup series, and the unchanged tree and the sleeping fix under the burner below)
@pytest.mark.docker
def test_a_correct_fix_failed_by_its_own_deadlines_on_a_starved_host_is_run_again(env, task):
    """Broke: the four tests' own deadlines (alarm, elapsed-time assertion, subprocess and future timeouts) failed
    under a neighbour at the engine's highest CPU weight while the run ended in time: 0.0 for a correct fix, with
    no second chance. Now: starved with no second clearing the host -> rerun in a fresh container, whose verdict
    stands (1.0 where its deadlines held; 0.0 only after a rerun that also failed starved, said in the reason).
    On the same host without the burner the same fix is 1.0 (the deadlines are ten times the work)."""
    from lightswe.envs import grading

    deadlines = _deadline_task(task, KINDS)
    start(env)
    env.step(bash(FIX))
    try:
        idle = grading.grade(env.sandbox, deadlines, timeout=60)
    except grading.GradingError as err:  # other users' load starved even the control: the feature, not a fault
        pytest.skip(f"this host is too loaded for the control run: {err}")
    assert idle.reward == 1.0, idle.reason
    _zero_only_after_a_starved_rerun(deadlines, env)


def _zero_only_after_a_starved_rerun(deadlines, env) -> None:
    """Grade the fix in ``env`` on ``deadlines`` under the burner: 1.0 (at once, or after a rerun), or 0.0 only
    after a rerun that failed starved again (``reruns`` 1, the reason says so); never GradingError for a run
    that ended in time."""
    from lightswe.envs import grading

    with burner() as burned:
        graded = grading.grade(env.sandbox, deadlines, timeout=60)
    print(graded.reason[-300:], graded.reruns, graded.tests_cpu_s, graded.tests_s, burned)
    if graded.reward == 0.0:
        assert graded.reruns == 1 and "failed starved of CPU twice" in graded.reason, graded.reason
    else:
        assert graded.reward == 1.0, graded.reason


@pytest.mark.docker
def test_no_change_on_a_starved_host_is_zero_never_no_reward(env, task):
    """Thinking as the policy (and what the main job met on this 2-CPU host, 2 of a step's 16 episodes): submit
    nothing while the host is loaded. The deadline tests fail on the bug at once, starved or not: 0.0 (a rerun at
    most), never GradingError (reward None, which the learner drops: a failure with no score)."""
    from lightswe.envs import grading

    start(env)
    with burner() as burned:
        graded = grading.grade(env.sandbox, _deadline_task(task, KINDS), timeout=40)
    print(graded.reason[-300:], graded.reruns, graded.tests_cpu_s, graded.tests_s, burned)
    assert graded.reward == 0.0 and graded.reruns in (0, 1), graded.reason


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_deadline_alone(env, task, kind):
    """Each kind of the test above alone (one failing test in a run otherwise starved): 0.0 only after a starved
    rerun."""
    start(env)
    env.step(bash(FIX))
    _zero_only_after_a_starved_rerun(_deadline_task(task, [kind]), env)


@pytest.mark.slow  # (20 s under the burner; the clearing rule it rests on runs in the default suite on made series)
@pytest.mark.docker
def test_a_fix_that_sleeps_past_the_deadlines_stays_zero_under_load(env, task):
    """Thinking as the policy: load does not excuse a slow fix. One that sleeps past the deadlines under the same
    burner: its run starved overall, but in the seconds it slept it wanted no CPU -> 0.0, not rerun."""
    from lightswe.envs import grading

    start(env)
    env.step(bash(SLEEPS))
    with burner() as burned:
        graded = grading.grade(env.sandbox, _deadline_task(task, KINDS), timeout=40)
    print(graded.reason[:200], graded.tests_cpu_s, graded.tests_cpu_wait_s, graded.tests_s, burned)
    assert graded.reward == 0.0 and graded.reruns == 0, graded.reason
    assert graded.tests_cpu_wait_s > 0.5 * graded.tests_s, "the burner did not load the host"  # starved overall


@pytest.mark.slow
@pytest.mark.docker
def test_a_fix_that_spins_past_the_deadlines_stays_zero_on_a_loaded_host(env, task):
    """Thinking as the policy: a fix that spins 3 s of CPU per call under a neighbour of a grading's weight (the
    host loaded, the grading still given its quarter of a CPU) is 0.0, not rerun. Where other users' load
    leaves it under a quarter, a spin is told from a correct fix by nothing (both wanted the CPU and got too
    little): skipped then, as the machine's failure it is."""
    from lightswe.envs import grading

    start(env)
    env.step(bash(SPINS))
    with burner(shares=starvation.GRADING_CPU_SHARES, loops=1):
        try:
            graded = grading.grade(env.sandbox, _deadline_task(task, KINDS), timeout=40)
        except grading.GradingError as err:
            pytest.skip(f"other users' load starved the grading twice: {err}")
    print(graded.reason[:200], graded.tests_cpu_s, graded.tests_s)
    if graded.reruns:
        pytest.skip(f"other users' load starved the first run: {graded.reason[-300:]}")
    assert graded.reward == 0.0 and graded.tests_cpu_s > 0.25 * graded.tests_s, graded.reason
