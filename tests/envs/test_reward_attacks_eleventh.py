"""Adversarial episodes, eleventh pass: the tenth pass's grading changes (the affinity lock, the starvation
rule, grading slots) attacked as a policy through its tool calls. See the README's *Threat model*.

Broke before the fix:

- **a lock that says locked and blocks nothing**: ``runner.lock_affinity`` reported True as soon as the kernel
  took the filter, but the filter names sched_setaffinity only for x86_64/x32, i386, aarch64 and arm; on any
  other arch (riscv64, ppc64le, s390x...) it allowed everything, and grading judged starvation anyway (it never
  read ``Sandbox.affinity_locked``): the tenth pass's pinned hang was the machine's failure (no reward) again ->
  the lock is proven (a ``sched_setaffinity`` must then fail with EPERM) and grading judges starvation only in a
  grading container whose runner proved it;
- **a burst that makes innocent gradings wait past their bound**: a grading waited for a slot only its own test
  timeout, but one holds a slot up to twice that (pytest's files-whole rerun after exit 4, each run up to the
  exec grace past the timeout): a policy's burst of such submissions filling every slot made each grading that
  came right after wait past its bound, ``GradingError`` (no reward) for innocent episodes -> a grading waits
  longer than any hold of the same timeout (grade6: its turn in a FIFO queue, bounded by the holders' holds).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import FIX, bash, start

_PROBE = """
import os, sys
from lightswe.envs import runner
if sys.argv[1] == "unknown-arch":  # the filter of an arch the table does not name: riscv64's number only
    runner._AFFINITY_SYSCALLS = ((0xC00000F3, 122, 0xFFFFFFFF),)
locked = runner.lock_affinity()
try:
    os.sched_setaffinity(0, os.sched_getaffinity(0))
    can_set = True
except PermissionError:
    can_set = False
print(locked, can_set)
"""


def _lock(mode: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.split()


def test_the_affinity_lock_is_reported_only_when_it_blocks(tmp_path):
    """Broke: on an arch the filter did not name, the filter was installed (True) and blocked nothing. Now True
    means a sched_setaffinity of the runner itself failed with EPERM after the filter went in (real kernel: a
    child process each, the filter cannot be removed)."""
    if not os.path.exists("/proc/self/status") or "Seccomp:" not in open("/proc/self/status").read():
        pytest.skip("this kernel has no seccomp")
    assert _lock("known-arch") == ["True", "False"]  # this machine's arch: locked, and it holds
    assert _lock("unknown-arch") == ["False", "True"]  # a filter that blocks nothing is not called a lock


@pytest.mark.docker
def test_grading_judges_starvation_only_in_a_locked_grading_container(env, task):
    """Broke: grading read the CPU counters (and could call a timed-out run starved: no reward) whatever the
    grading container's runner said of its lock. Now an unlocked grading container (here an image build's
    sandbox, whose runner installs no filter) is graded without any starvation judgment (no counters read, no
    slot taken: a timeout stays the policy's 0.0); the default grading container is locked and measured."""
    from lightswe.envs import grading, starvation
    from lightswe.envs.sandbox import Sandbox, SandboxConfig

    start(env)
    env.step(bash(FIX))
    box = env.sandbox
    made: list[Sandbox] = []

    def unlocked() -> Sandbox:
        config = SandboxConfig(image=box.config.image, workdir=grading.WORKDIR, build=True, disk_limit=None,
                               labels={"lightswe.test": "attack11-unlocked"})
        made.append(Sandbox(config, client=box.client))
        return made[-1]

    try:
        graded = grading.grade(box, task, fresh=unlocked, timeout=120)
        assert not made[0].affinity_locked
        assert graded.reward == 1.0 and graded.tests_cpu_s is None, graded.reason
        locked = grading.grade(box, task, timeout=120)
        assert locked.reward == 1.0, locked.reason
        probe = grading.default_fresh(box)()
        try:
            measurable = starvation.cgroup_dir(probe.api, probe.container_id) is not None
        finally:
            probe.close()
        print(f"unlocked: {graded.tests_cpu_s}, locked: {locked.tests_cpu_s} s of CPU, measurable={measurable}")
        assert (locked.tests_cpu_s is not None) == measurable  # counters read where this host has them
    finally:
        for sandbox in made:
            sandbox.close()


def test_a_grading_waits_longer_than_a_slot_is_held(tmp_path):
    """Broke: every slot of a (1-CPU) host held by gradings that each keep it for two test runs of the same
    timeout (here 2 x 0.5 s plus a little, real flocks in another process): a grading that came right after
    waited only its timeout and failed (no reward for an innocent episode). Now (grade6) it waits its turn: no
    bound of its own, only the holders' declared holds (``admission_hold``) while nothing moves."""
    import time

    from lightswe.envs import starvation

    timeout = 0.5

    def burst() -> subprocess.Popen:
        holder = subprocess.Popen(
            [sys.executable, "-c", "import pathlib, sys, time; from lightswe.envs import starvation; "
             f"ctx = starvation.admitted({starvation.GRADINGS_PER_CPU}, "
             f"hold_s={starvation.admission_hold(timeout)}, "
             f"slot_dir=pathlib.Path({str(tmp_path)!r}), host_cpus=1); "
             f"ctx.__enter__(); print('in', flush=True); time.sleep({2 * timeout + 0.4})"],
            stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "in"
        return holder

    holder = burst()
    try:
        with pytest.raises(starvation.AdmissionError):  # the old bound: the test timeout
            with starvation.admitted(1, hold_s=starvation.admission_hold(timeout), wait_s=timeout,
                                     slot_dir=tmp_path, host_cpus=1):
                pytest.fail("admitted while every slot was held")
    finally:
        holder.wait(timeout=30)
    holder = burst()
    try:
        started = time.monotonic()
        with starvation.admitted(1, hold_s=starvation.admission_hold(timeout), slot_dir=tmp_path, host_cpus=1):
            waited = time.monotonic() - started
        assert timeout < waited < 5.0
    finally:
        holder.kill()
        holder.wait(timeout=30)
