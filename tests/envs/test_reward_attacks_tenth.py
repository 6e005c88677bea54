"""Adversarial episodes, tenth pass: the starvation rule (``envs/starvation.py``) from both sides -- a policy
that wants its failures dropped from the batch (reward None instead of 0.0), and an honest episode whose grading
a neighbour starves -- and the uid leases. Real engine, the embedded demo task. See the README's *Threat model*
for each verdict.

Broke before the fix:

- **a failing fix dressed as the machine's failure**: the graded code pinned itself to one CPU
  (``os.sched_setaffinity``, unprivileged) beside a neighbour's busy loop and spun: it waited for a CPU nearly
  all its run and got a few percent of its quota; "starved", rerun, starved again: ``GradingError``, no reward,
  where the hang is the policy's 0.0 -> no command in a sandbox can change its CPU affinity (the runner's
  seccomp filter), and starved also needs a host with no idle CPU to give;
- **many gradings at once**: nothing bounded them, so a policy's episodes all submitting spinning code could
  saturate the host until every hang read as starved -> gradings are admitted by CPU (4 CPUs of grading quota
  per host CPU, across processes);
- **a uid lease leaked** when the engine did not answer whether a container used it.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
from lightswe.envs import starvation
from lightswe.envs.tool_calls import ToolCall

from .conftest import bash, start

# the graded code pins itself to CPU 0 (where it can) and spins (a C loop: any() over an endless iterator of zeros)
PINNED_LOOP = ("printf 'import os\\n\\ndef pin():\\n    try:\\n        os.sched_setaffinity(0, {0})\\n"
               "    except OSError:\\n        pass\\n' > toolz/_pin.py && "
               "sed -i 's/return next(itertools.islice(seq, n + 1, None))/"
               "from toolz._pin import pin; pin(); any(iter(int, 1))/' toolz/itertoolz.py")


def _hog(client, *, cpuset: str | None = None, loops: int = 4, shares: int = 262144) -> str:
    """A neighbour burning ``loops`` busy loops (on ``cpuset`` only when given) at CPU weight ``shares`` (default:
    the engine's highest)."""
    container = client.containers.run(
        "lightswe/base:bookworm", ["sh", "-c", " ".join(["while :; do :; done &"] * loops) + " wait"],
        detach=True, remove=True, network_mode="none", cpu_shares=shares, cpuset_cpus=cpuset,
        labels={"lightswe.test": "attack10-hog"})
    return container.id


def test_waiting_beside_an_idle_cpu_is_never_starvation():
    """The rule itself (real counters in the docker tests below): a run that waited and got little is starved
    only when the host had under a quarter of its quota idle; a quota past the host's CPUs counts as the host's."""
    hung_beside_idle = starvation.CpuShare(wall_s=10.0, cpu_s=0.3, waiting_s=9.5, cpus=1.0, host_idle_s=9.0)
    assert not hung_beside_idle.starved
    crowded = replace(hung_beside_idle, host_idle_s=0.4)
    assert crowded.starved
    assert "0.4 s of CPU idle on the host" in str(crowded)
    assert not replace(crowded, cpu_s=2.6).starved  # got a quarter of its quota: not starved
    assert not replace(crowded, waiting_s=4.9).starved  # waited under half the time
    before = starvation.CpuSample(usage_s=0.0, waiting_s=0.0, at=0.0, host_idle_s=100.0)
    after = starvation.CpuSample(usage_s=1.0, waiting_s=9.0, at=10.0, host_idle_s=100.5)
    got = starvation.share(before, after, cpus=10_000.0)
    assert got.cpus == os.cpu_count() and got.host_idle_s == 0.5
    idle = starvation.host_idle()
    assert idle is not None and idle > 0
    time.sleep(0.2)
    assert starvation.host_idle() >= idle


@pytest.mark.docker
def test_no_command_in_a_sandbox_can_change_its_cpu_affinity():
    """The fix for the pinned hang below, in the default run: as the agent and as the harness's root, in the
    background too, ``sched_setaffinity`` is EPERM (reading the affinity still works); an image build's sandbox
    (the harness's own commands, Docker's default capabilities) is not locked."""
    from lightswe.envs.sandbox import Sandbox, SandboxConfig

    probe = ("python3 -c 'import os; print(len(os.sched_getaffinity(0)))'; taskset -pc 0 $$ >/dev/null 2>&1; "
             "echo set=$?; (python3 -c 'import os; os.sched_setaffinity(0, {0})' 2>&1 | tail -1) & wait")
    with Sandbox(SandboxConfig(image="lightswe/base:bookworm", workdir="/")) as box:
        for user in ("agent", "root"):
            lines = box.exec(probe, timeout=30, user=user).output.splitlines()
            assert lines == [str(len(os.sched_getaffinity(0))), "set=1",
                             "PermissionError: [Errno 1] Operation not permitted"], (user, lines)
        assert box.affinity_locked  # said by the runner once started (at the first command)
    with Sandbox(SandboxConfig(image="lightswe/base:bookworm", workdir="/", user="root", build=True,
                               disk_limit=None)) as build:
        assert build.exec("taskset -pc 0 $$ >/dev/null; echo set=$?", timeout=30).output.split() == ["set=0"]
        assert not build.affinity_locked


@pytest.mark.slow
@pytest.mark.docker
def test_a_hang_pinned_beside_a_neighbour_is_the_policys_zero_not_the_machines_failure(env):
    """Broke: the graded code pinned itself to CPU 0, where a neighbour burned the CPU at four gradings' weight,
    and spun. It waited nearly all its run and got a few percent of its quota: "starved" twice, GradingError (no
    reward) for a hang. Now no command can change its affinity (the runner's seccomp filter): the hang runs where
    the host has CPU, 0.0 with ``timed_out`` and no rerun."""
    import docker
    from lightswe.envs.grading import GradingError

    client = docker.from_env()
    start(env)
    assert "Operation not permitted" in env.step(bash("taskset -c 0 true"))[0]
    env.step(bash(PINNED_LOOP))
    hog = _hog(client, cpuset="0", loops=2, shares=4 * 8192)
    try:  # from here on the hog is removed whatever happens
        env.test_timeout = 8
        idle_before, wall_before = starvation.host_idle(), time.monotonic()
        try:
            _, reward, terminated, _, info = env.step(ToolCall(name="submit"))
        except GradingError as err:
            idle = starvation.host_idle() - idle_before
            if idle < 0.25 * (time.monotonic() - wall_before):  # not pinned, and still starved: the host's doing
                pytest.skip(f"other users' load left no idle CPU during the grading ({idle:.1f} s): {err}")
            raise
    finally:
        env.test_timeout = 120
        client.api.remove_container(hog, force=True)
    grade_ = info["grade"]
    print(grade_.reason)
    assert terminated and reward == 0.0 and info["timed_out"] and grade_.reruns == 0, grade_.reason


def test_a_uid_whose_in_use_check_fails_is_not_kept_leased(tmp_path):
    """Broke: when asking the engine whether a container carries the uid failed (engine busy or restarting), the
    exception left the uid's lock held by an fd nobody owned: that uid stayed leased until the process ended
    (a lease leaked per failed start). Now the lock is given back and the error raised (SandboxError above it)."""

    from lightswe.envs.uids import UidLease

    asked = []

    def engine_down(uid: int) -> bool:
        asked.append(uid)
        raise ConnectionError("the engine did not answer")

    with pytest.raises(ConnectionError):
        UidLease(engine_down, lease_dir=tmp_path)
    assert not (tmp_path / str(asked[0])).exists()
    fd = UidLease._lock(tmp_path / str(asked[0]))  # free for the next lease (a leaked fd would still lock it)
    assert fd >= 0
    UidLease._unlock(tmp_path / str(asked[0]), fd)


def test_gradings_are_admitted_by_cpu_across_processes(tmp_path):
    """Open before: nothing bounded how many gradings ran at once, so a policy whose episodes all submit
    spinning code could saturate the host until each grading got under a quarter of a CPU: every hang
    "starved" (no reward instead of 0.0). Now a host runs at most ``GRADINGS_PER_CPU`` CPUs of grading quota per
    CPU (2 since grade6): a slot is an ``flock`` shared by every process of the host, all or nothing, given back
    when its holder dies."""
    import subprocess
    import sys

    total = starvation.GRADINGS_PER_CPU  # a 1-CPU host
    holder = subprocess.Popen(  # another process (a Ray worker, another run) holding one of a 1-CPU host's slots
        [sys.executable, "-c", "import sys, pathlib; from lightswe.envs import starvation; "
         f"ctx = starvation.admitted(1, hold_s=5, slot_dir=pathlib.Path({str(tmp_path)!r}), host_cpus=1); "
         "ctx.__enter__(); "
         "print('in', flush=True); sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "in"
        with pytest.raises(starvation.AdmissionError, match="no grading slot came free in 0.5 s"):
            with starvation.admitted(total, hold_s=5, wait_s=0.5, slot_dir=tmp_path, host_cpus=1):  # one is taken
                pytest.fail("admitted past the host's grading quota")
        with starvation.admitted(total - 1, hold_s=5, wait_s=0.5, slot_dir=tmp_path, host_cpus=1):  # the rest
            with pytest.raises(starvation.AdmissionError):
                with starvation.admitted(1, hold_s=5, wait_s=0.3, slot_dir=tmp_path, host_cpus=1):
                    pytest.fail("one grading CPU too many on a 1-CPU host")
    finally:
        holder.kill()  # SIGKILL: its slot comes back with the process
        holder.wait(timeout=30)
    started = time.monotonic()
    with starvation.admitted(total, hold_s=5, wait_s=5, slot_dir=tmp_path, host_cpus=1):
        assert time.monotonic() - started < 1.0
