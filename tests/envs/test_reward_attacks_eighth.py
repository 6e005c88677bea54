"""Adversarial episodes, eighth pass: episodes that run side by side on one host. A policy in one sandbox
attacks the OTHER episodes and the host, through tool calls only (real engine, the embedded demo task). See the
README's *Threat model* for the verdict on each attack.

Broke before the fix:

- **per-user kernel limits shared across containers**: every sandbox's ``agent`` was uid 1000 of the host's
  user namespace, and the kernel counts inotify instances (``fs.inotify.max_user_instances``: 128) and watches,
  epoll watches, POSIX message-queue bytes (``RLIMIT_MSGQUEUE``: 800 KiB), queued signals and processes per
  user: a leftover process in one sandbox holding all 128 inotify instances made ``inotify_init`` fail in every
  other sandbox (measured: -1 in the neighbour), and queues holding the 800 KiB made its ``mq_open`` fail; an
  honest fix of another episode whose tests need them was graded 0.0 -> each sandbox's agent is a uid of its
  own (``envs/uids.py``: leased per host, its files and ``/etc/passwd`` entry moved with it), so a neighbour
  exhausts only its own counters;
- **host-wide kernel limits**: 3,071 ``openpty`` took every pseudo-terminal containers may have and one
  ``io_setup(65536)`` the host's whole ``fs.aio-max-nr`` (ENOSPC, EAGAIN in every other sandbox) -> a devpts
  instance of 256 per sandbox, and the host-wide limits raised past what the sandboxes' memory allows
  (``envs/host_limits.py``);
- **the host's disk**: sparse volumes overcommitted it (a neighbour's write within its own limit failed) -> with
  ``LIGHTSWE_DISK_ADMISSION=reserve`` a volume is made only while the host's disk can keep every live volume's
  promise (``disk.admitted``; not the default: it caps this machine at 8 live sandboxes);
- **a grader under load**: a correct fix starved of CPU by neighbours timed out: 0.0 -> a run that waited for a
  CPU half its time and got under a quarter of its quota reruns once, twice is ``GradingError``
  (``envs/starvation.py``); an infinite loop is still 0.0, and the agent's leftovers are frozen while it grades.

Held (README): the container's log, the image's layers, the network, ``/dev/shm``, keyrings, user namespaces.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from lightswe.envs.sandbox import Sandbox, SandboxConfig
from lightswe.envs.swe_env import SWEEnv
from lightswe.envs.tool_calls import ToolCall

from .conftest import FIX, bash, start

KERNEL = "-kernel"  # task id suffix of the variant whose tests need inotify and a POSIX message queue
KERNEL_TESTS = """diff --git a/toolz/tests/test_nth_kernel.py b/toolz/tests/test_nth_kernel.py
new file mode 100644
index 0000000..0adf421
--- /dev/null
+++ b/toolz/tests/test_nth_kernel.py
@@ -0,0 +1,23 @@
+import ctypes
+import os
+
+from toolz import nth
+
+LIBC = ctypes.CDLL(None, use_errno=True)
+
+
+def test_nth_watched():
+    fd = LIBC.inotify_init1(0)
+    assert fd >= 0, os.strerror(ctypes.get_errno())
+    os.close(fd)
+    assert nth(2, iter("ABCDE")) == "C"
+
+
+def test_nth_queued():
+    LIBC.mq_open.restype = ctypes.c_int
+    name = b"/nth-%d" % os.getpid()
+    queue = LIBC.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, None)
+    assert queue >= 0, os.strerror(ctypes.get_errno())
+    LIBC.mq_close(queue)
+    LIBC.mq_unlink(name)
+    assert nth(1, "ABCDE") == "B"
"""
F2P_KERNEL = "toolz/tests/test_nth_kernel.py::test_nth_watched"
P2P_KERNEL = "toolz/tests/test_nth_kernel.py::test_nth_queued"
# a process left running that holds every inotify instance of its uid, and queues holding its message-queue bytes
HOG = r"""setsid python3 -c '
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
held = [libc.inotify_init1(0) for _ in range(1000)]
queues = [libc.mq_open(b"/hog-" + str(i).encode(), os.O_CREAT | os.O_RDWR, 0o600, None) for i in range(1000)]
print(sum(fd >= 0 for fd in held), sum(q >= 0 for q in queues), flush=True)
time.sleep(3600)' > /tmp/hog.log 2>&1 < /dev/null & sleep 3; cat /tmp/hog.log"""
PROBE = r"""python3 -c '
import ctypes, os
libc = ctypes.CDLL(None)
queue = libc.mq_open(b"/probe", os.O_CREAT | os.O_RDWR, 0o600, None)
libc.mq_unlink(b"/probe")
print(libc.inotify_init1(0) >= 0, queue >= 0)'"""


@pytest.fixture(scope="module")
def env(task):
    """The demo task, and a variant whose test_patch adds tests that need inotify and a POSIX message queue."""
    kernel = replace(task, instance_id=task.instance_id + KERNEL, test_patch=KERNEL_TESTS,
                     FAIL_TO_PASS=[F2P_KERNEL], PASS_TO_PASS=[P2P_KERNEL])
    environment = SWEEnv([task, kernel], test_timeout=120)
    yield environment
    environment.close()


def neighbour(env: SWEEnv) -> Sandbox:
    """Another sandbox of the task's image on the same host (another episode's container)."""
    return Sandbox(SandboxConfig(image=env.sandbox.config.image))


# ------------------------------------------------------------------------------ per-user kernel limits
@pytest.mark.docker
def test_a_neighbour_holding_its_users_kernel_counters_leaves_the_others_theirs(env):
    """Broke: the neighbour's leftover took the 128 inotify instances and the 800 KiB of message queues of uid
    1000, every sandbox's agent; the honest fix of this episode, whose tests need both, was graded 0.0."""
    start(env, KERNEL)
    hog = neighbour(env)
    try:
        held = hog.exec(HOG, timeout=30).output.split()
        assert held[0] == "128" and 0 < int(held[1]) < 1000, held  # it reached its limits
        assert hog.exec(PROBE).output.split() == ["False", "False"]  # the hog itself is out of both
        mine = env.step(bash("id -u; " + PROBE))[0].split()
        assert mine[1:3] == ["True", "True"], mine
        assert int(mine[0]) not in (1000, hog.agent_uid)
        env.step(bash(FIX))
        _, reward, terminated, _, info = env.step(ToolCall(name="submit"))
        assert terminated and reward == 1.0, info["grade"].reason
    finally:
        hog.close()


@pytest.mark.docker
def test_each_sandbox_and_its_grading_container_have_their_own_uid(env):
    """The uid is leased per container (agent's, grading's, the neighbour's), its files and name move with it,
    and it is given back when the container is removed; the agent's own leftover holding its counters does not
    reach its grading container (broke: same uid, 0.0 for the fix)."""
    start(env, KERNEL)
    box = env.sandbox
    seen = box.exec("id -u; id -un; stat -c '%u %U' /testbed/setup.py /home/agent; touch /tmp/mine; "
                    "stat -c %u /tmp/mine; whoami").output.split()
    uid = box.agent_uid
    assert seen == [str(uid), "agent", str(uid), "agent", str(uid), "agent", str(uid), "agent"], seen
    other = neighbour(env)
    try:
        assert other.agent_uid not in (uid, 1000)
        assert other.exec("id -u").output.split() == [str(other.agent_uid)]
    finally:
        lease = other._uid
        other.close()
    assert lease is not None and lease._fd == -1  # given back
    assert env.step(bash(HOG))[0].split()[0] == "128"
    env.step(bash(FIX))
    _, reward, _, _, info = env.step(ToolCall(name="submit"))
    assert reward == 1.0, info["grade"].reason


# ------------------------------------------------------------------------------ host-wide kernel limits
PTYS = r"""setsid python3 -c '
import ctypes, os, time
held = []
try:
    while True:
        held.append(os.openpty())
except OSError as err:
    print(len(held), err.errno, flush=True)
libc = ctypes.CDLL(None, use_errno=True)
ctx = ctypes.c_ulong(0)
print(libc.syscall(206, 65536, ctypes.byref(ctx)), flush=True)  # io_setup: the host's whole default aio-max-nr
time.sleep(3600)' > /tmp/ptys.log 2>&1 < /dev/null & sleep 3; cat /tmp/ptys.log"""
OPEN_ONE = r"""python3 -c '
import ctypes, os
os.openpty()
ctx = ctypes.c_ulong(0)
print("pty ok", ctypes.CDLL(None).syscall(206, 128, ctypes.byref(ctx)))'"""


@pytest.mark.docker
def test_a_neighbour_cannot_take_the_hosts_terminals_or_aio_contexts(env):
    """Broke: the neighbour's leftover opened 3,071 pseudo-terminals (``kernel.pty.max`` less the host's
    reserve) and reserved 65,536 AIO events (``fs.aio-max-nr``): ``openpty`` failed with ENOSPC and
    ``io_setup`` with EAGAIN in every other sandbox. Now each sandbox has its own devpts instance of 256 and the
    host-wide limits are raised past what the sandboxes' memory allows (envs/host_limits.py)."""
    from lightswe.envs import host_limits

    start(env)
    hog = neighbour(env)
    try:
        held = hog.exec(PTYS, timeout=30).output.split()
        assert held[:3] == [str(host_limits.PTYS_PER_SANDBOX), "28", "0"], held  # its own 256, then ENOSPC
        assert env.step(bash(OPEN_ONE))[0].split()[:3] == ["pty", "ok", "0"]
    finally:
        hog.close()
    for name, wanted in host_limits.SYSCTLS.items():
        with open(f"/proc/sys/{name}") as handle:
            assert int(handle.read()) >= wanted, name


# ------------------------------------------------------------------------------ a grader under load
LOOP = "sed -i 's/return next(itertools.islice(seq, n + 1, None))/while True: pass/' toolz/itertoolz.py"
# a leftover that beats every 0.1 s (a CPU burner in between): it would compete with the grading if it ran
BEATING = r"""setsid python3 -c '
import time
while True:
    with open("/tmp/beat", "a") as handle:
        handle.write(f"{time.time():.2f}\n")
    end = time.time() + 0.1
    while time.time() < end:
        pass' > /dev/null 2>&1 < /dev/null & sleep 1; wc -l < /tmp/beat"""


@pytest.mark.docker
def test_an_infinite_loop_is_still_the_policys_zero_and_its_leftovers_sleep_through_the_grading(env):
    """Thinking as the policy: a fix that loops forever times out with the CPU it was given (not starved: no
    rerun, 0.0), and a CPU burner left running in its own container cannot starve its grading into "the
    machine's failure": the agent's container is frozen from the snapshot until the grade is made."""
    start(env)
    assert int(env.step(bash(BEATING))[0].split()[0]) > 0
    env.step(bash(LOOP))
    env.test_timeout = 8
    try:
        _, reward, terminated, _, info = env.step(ToolCall(name="submit"))
    finally:
        env.test_timeout = 120
    grade_ = info["grade"]
    print(grade_.reason)
    assert terminated and reward == 0.0 and info["timed_out"] and grade_.reruns == 0, grade_.reason
    assert grade_.tests_cpu_s is not None and grade_.tests_cpu_s > 0.25 * 8, grade_.reason  # it got its CPU
    beats = [float(x) for x in env.sandbox.exec("cat /tmp/beat").output.split()]
    longest = max(b - a for a, b in zip(beats, beats[1:], strict=False))
    assert longest > 8, f"the leftover ran during the grading (longest pause {longest:.1f} s)"


def _hog(client, cpus: float) -> str:
    """A container that burns ``cpus`` CPUs (twice as many busy loops) at the engine's highest CPU weight: the
    host starving the grading."""
    container = client.containers.run(
        "lightswe/base:bookworm", ["sh", "-c", " ".join(["while :; do :; done &"] * max(2, round(2 * cpus))) + " wait"],
        detach=True, remove=True, network_mode="none", cpu_shares=262144, nano_cpus=int(cpus * 1e9),
        labels={"lightswe.test": "attack8-hog"})
    return container.id


@pytest.mark.slow
@pytest.mark.docker
def test_a_correct_fix_starved_by_the_host_is_the_machines_failure_not_a_zero(env):
    """Broke: neighbours burning every CPU at a higher weight made the correct fix's tests time out: 0.0 with
    ``timed_out``, the policy blamed. Now: starved (waited for a CPU, got under a quarter of its quota), rerun
    once in another fresh container, starved again -> GradingError (no reward)."""
    import docker
    from lightswe.envs.grading import GradingError

    client = docker.from_env()
    start(env)
    env.step(bash(FIX))
    hogs = [_hog(client, 2.0) for _ in range(3)]
    env.test_timeout = 4  # the run gets ~2% of a CPU: pytest's start alone needs more than 4 s of that
    try:
        with pytest.raises(GradingError, match="starved of CPU") as caught:
            _, reward, _, _, info = env.step(ToolCall(name="submit"))
            pytest.fail(f"graded {reward}: {info['grade'].reason}")
    finally:
        env.test_timeout = 120
        for hog in hogs:
            client.api.remove_container(hog, force=True)
    assert caught.value.stage == "tests"
    start(env)  # the machine is free again: the same fix is 1.0
    env.step(bash(FIX))
    _, reward, _, _, info = env.step(ToolCall(name="submit"))
    assert reward == 1.0 and info["grade"].reruns == 0, info["grade"].reason


# ------------------------------------------------------------------------------ the host's disk
@pytest.mark.docker
def test_sandboxes_cannot_promise_more_disk_than_the_host_has(env, monkeypatch, tmp_path):
    """Broke: volumes are sparse, so sandboxes each within their disk limit could fill the host's disk together
    (4 GiB each, 40 GiB free here: ten episodes writing theirs) and a neighbour's writes within its own limit
    failed. With ``LIGHTSWE_DISK_ADMISSION=reserve`` (not the default: README) a volume is made only while the
    host can keep every live volume's promise; here on a 900 MiB
    file system (a tmpfs standing in for the host's disk): two 300 MiB sandboxes fit, the third is refused
    (SandboxError: no reward, never 0.0), and both admitted ones write their whole limit."""
    import subprocess

    from lightswe.envs import disk
    from lightswe.envs.sandbox import SandboxError

    if disk.disk_mode(env.sandbox.client if env.sandbox else Sandbox(SandboxConfig()).client) != "loop":
        pytest.skip("loop volumes only (root, local engine)")
    small = tmp_path / "host-disk"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900m", "attack8-disk", str(small)], check=True)
    monkeypatch.setattr(disk, "VOLUME_DIR", small)
    monkeypatch.setattr(disk, "HOST_RESERVE", 64 * 1024 ** 2)
    monkeypatch.setattr(disk, "ADMIT_WAIT_S", 0.0)
    monkeypatch.setenv("LIGHTSWE_DISK_ADMISSION", "reserve")
    boxes = []
    try:
        config = SandboxConfig(image=env.image(env.tasks[0]), disk_limit="300m")
        boxes = [Sandbox(config), Sandbox(config)]
        with pytest.raises(SandboxError, match="cannot promise"):
            boxes.append(Sandbox(config))
        for box in boxes:  # each writes (real blocks, not a hole) up to its own limit
            done = box.exec("dd if=/dev/urandom of=/tmp/fill bs=1M count=250 status=none; echo $?", timeout=120)
            assert done.output.split()[0] == "0", done.output
    finally:
        for box in boxes:
            box.close()
        subprocess.run(["umount", "-l", str(small)], check=False)


# ------------------------------------------------------------------------------ the uid lease itself
def test_a_uid_leased_by_another_process_is_never_handed_out_until_that_process_dies(tmp_path):
    """The lease is an ``flock`` per uid across processes (Ray workers, several runs on one host); the kernel
    gives it back when its holder dies, and ``in_use`` (a container still labelled with it) refuses it too."""
    import subprocess
    import sys

    from lightswe.envs import uids

    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib; from lightswe.envs.uids import UidLease; "
         f"lease = UidLease(lease_dir=pathlib.Path({str(tmp_path)!r})); print(lease.uid, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = int(child.stdout.readline())
        assert uids.UID_RANGE[0] <= held < uids.UID_RANGE[1]
        assert uids.UidLease._lock(tmp_path / str(held)) == -1  # held by the other process
    finally:
        child.kill()  # SIGKILL: no release() ran, the lock file stays
        child.wait(timeout=30)
    assert (tmp_path / str(held)).exists()
    fd = uids.UidLease._lock(tmp_path / str(held))  # its holder is gone: the kernel gave the lock back
    assert fd >= 0
    uids.UidLease._unlock(tmp_path / str(held), fd)
    asked = []
    lease = uids.UidLease(lambda uid: asked.append(uid) or len(asked) < 3, lease_dir=tmp_path)
    assert lease.uid == asked[-1] and len(asked) == 3  # the first two were "in use" (a labelled container)
    lease.release()
    assert not (tmp_path / str(lease.uid)).exists()
