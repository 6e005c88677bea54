"""Whether a container got the CPU it was promised: a timed-out test run told apart from a starved one.

Why: a test run that hits its timeout is the policy's failure (its code hangs: 0.0), but on a shared host a
correct fix's tests can time out only because neighbours took the CPU; that was 0.0 too, a machine's failure
scored as the policy's. Wall time alone cannot tell them apart, and CPU time alone cannot either (a hang that
sleeps uses none, like a starved run). Two counters of the container's cgroup (v2, also mounted on hybrid
hosts at ``/sys/fs/cgroup/unified``) can:

- ``cpu.stat usage_usec``: the CPU time the container's processes got;
- ``cpu.pressure`` ``some total`` (PSI, kernel ``Documentation/accounting/psi.rst``): the time at least one of
  its processes was runnable but waiting for a CPU.

A run is **starved** when, over its wall time ``T``, it waited for a CPU at least half of ``T`` while getting
less than a quarter of its CPU quota (``cpus x T``, ``cpus`` capped at the host's CPUs) **and the host had no
CPU to give**: its idle CPU time (``/proc/stat`` ``idle`` + ``iowait``, all CPUs) was under that same quarter
quota. A hang is never starved: a sleeping or blocked process is not runnable (no pressure), and a busy loop
gets its quota whenever the host has CPU to give (its own threads competing for its quota are throttled only
after using it: usage at the quota). Only a host that gives the container under a quarter of a CPU while it
wants one makes a starved run; grading then reruns the tests once in another fresh container, and a second
starved run is the machine's failure (``GradingError``, no reward).

Why the graded code cannot choose where it waits (tenth adversarial pass): the waiting is the container's,
and the code it runs could choose the CPU it waits on. Pinned to CPU 0 (``os.sched_setaffinity(0, {0})``,
unprivileged) beside a neighbour burning that CPU at four gradings' weight, a hang got 1.1 s and 1.6 s of CPU
in its 8.1 s runs, waiting about 6 s of each: "starved", rerun, starved again, and a failing fix came back as
the machine's failure (no reward) instead of 0.0 -- a policy that learns it hides its failures from the learner.
Now (1) no command in a sandbox can change its CPU affinity (the runner's seccomp filter,
:func:`lightswe.envs.runner.lock_affinity`): the same hang got 1.7-3.8 s of CPU (three runs) and was 0.0; and
(2) waiting while the host leaves CPU idle is never starvation (whatever made the container wait, the host had
CPU to give). ``cpus`` past the host's CPU count is capped at it.

Gradings admitted by CPU (:func:`admitted`, around every test run): graders outweigh the agents' containers
(``cpu_shares``), so what can starve a grading is other gradings and the host's own work. A policy whose many
episodes submit spinning code at once could saturate a host that runs more gradings than a quarter of a CPU
each can have: every one of them "starved", its hang no reward instead of 0.0 (and an honest neighbour's run
too). So at most ``GRADINGS_PER_CPU`` (4, 1 / ``GOT_AT_MOST``) CPUs of grading quota run per host CPU, counted
across processes (an ``flock`` per slot under ``$LIGHTSWE_CACHE/grading-slots``, given back by the kernel when
its holder dies): gradings alone can never leave each other under a quarter of a CPU; a grading that finds no
slot waits (its agent's container stays frozen) and, past its test timeout, is the machine's failure. Only
where starvation is judged (the engine's host is this one: :func:`cgroup_dir`).

On a host where the counters cannot be read (a remote engine, cgroup v1 without the unified hierarchy, no PSI)
:func:`cgroup_dir` is None and a timeout stays the policy's failure, as before; so it does in a grading
container whose runner could not prove its affinity lock (``Sandbox.affinity_locked`` False: no seccomp, no
ctypes, an arch the filter does not know; eleventh pass).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lightswe.envs.engine import CACHE_DIR
from lightswe.errors import InfrastructureError

CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
PROC_STAT = Path("/proc/stat")
WAITED_AT_LEAST = 0.5  # of the run's wall time, waiting for a CPU
GOT_AT_MOST = 0.25  # of the CPU quota over the run
GRADINGS_PER_CPU = 4  # CPUs of grading quota admitted per host CPU (1 / GOT_AT_MOST: none starves another)
SLOT_DIR = CACHE_DIR / "grading-slots"


class AdmissionError(InfrastructureError):
    """No grading slot came free in time (the host runs more gradings than its CPUs can serve)."""


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Cumulative counters at one moment: the cgroup's ``usage_s`` of CPU and ``waiting_s`` of PSI cpu ``some``,
    the host's ``host_idle_s`` (idle + iowait time of all its CPUs, s; None when ``/proc/stat`` cannot be read)."""

    usage_s: float
    waiting_s: float
    at: float  # time.monotonic()
    host_idle_s: float | None = None


@dataclass(frozen=True, slots=True)
class CpuShare:
    """What a container got over an interval: ``wall_s``, ``cpu_s`` (CPU time), ``waiting_s`` (runnable but
    waiting for a CPU), ``cpus`` (its quota, CPUs, at most the host's), ``host_idle_s`` (CPU time the host left
    idle meanwhile, all CPUs; None: unknown, counted as none)."""

    wall_s: float
    cpu_s: float
    waiting_s: float
    cpus: float
    host_idle_s: float | None = None

    @property
    def starved(self) -> bool:
        """Waited for a CPU at least half the time while getting under a quarter of its quota, and the host had
        under that quarter quota idle (module doc)."""
        quarter = GOT_AT_MOST * self.cpus * self.wall_s
        return (self.wall_s > 0 and self.waiting_s >= WAITED_AT_LEAST * self.wall_s and self.cpu_s < quarter
                and (self.host_idle_s or 0.0) < quarter)

    def __str__(self) -> str:
        idle = "" if self.host_idle_s is None else f", {self.host_idle_s:.1f} s of CPU idle on the host"
        return (f"{self.cpu_s:.1f} s of CPU in {self.wall_s:.1f} s (quota {self.cpus:g} CPU), "
                f"{self.waiting_s:.1f} s waiting for a CPU{idle}")


def cgroup_dir(api, container_id: str) -> Path | None:
    """The container's cgroup-v2 folder with ``cpu.stat`` and ``cpu.pressure`` on this host, or None (remote
    engine, no unified hierarchy, no PSI, container not running)."""
    try:
        pid = int(api.inspect_container(container_id)["State"]["Pid"])
        if pid <= 0:
            return None
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as handle:
            path = next((line.strip()[3:] for line in handle if line.startswith("0::")), None)
    except Exception:  # noqa: BLE001 - another host's pid, gone: no evidence
        return None
    if path is None:
        return None
    for root in CGROUP_ROOTS:
        folder = root / path.lstrip("/")
        if (folder / "cpu.pressure").is_file() and (folder / "cpu.stat").is_file():
            return folder
    return None


def sample(folder: Path | None) -> CpuSample | None:
    """The counters of ``folder`` now (None when ``folder`` is None or unreadable)."""
    if folder is None:
        return None
    try:
        stat = dict(line.split() for line in (folder / "cpu.stat").read_text().splitlines() if line.strip())
        some = next(line for line in (folder / "cpu.pressure").read_text().splitlines() if line.startswith("some"))
        waiting_us = int(dict(field.split("=") for field in some.split()[1:])["total"])
        return CpuSample(usage_s=int(stat["usage_usec"]) / 1e6, waiting_s=waiting_us / 1e6, at=time.monotonic(),
                         host_idle_s=host_idle())
    except (OSError, KeyError, ValueError, StopIteration):
        return None


def host_idle() -> float | None:
    """Seconds of CPU the host has left idle since boot, all CPUs together (``/proc/stat``'s ``cpu`` line:
    ``idle`` + ``iowait``, in ``USER_HZ`` ticks; ``proc(5)``), or None when unreadable."""
    try:
        with open(PROC_STAT, encoding="ascii") as handle:
            fields = handle.readline().split()
        if fields[0] != "cpu":
            return None
        return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def share(before: CpuSample | None, after: CpuSample | None, cpus: float) -> CpuShare | None:
    """What the container got between two samples (None when either is missing); ``cpus`` (its quota) is
    capped at the host's CPUs."""
    if before is None or after is None:
        return None
    idle = (None if before.host_idle_s is None or after.host_idle_s is None
            else max(0.0, after.host_idle_s - before.host_idle_s))
    return CpuShare(wall_s=after.at - before.at, cpu_s=after.usage_s - before.usage_s,
                    waiting_s=after.waiting_s - before.waiting_s, cpus=min(cpus, float(os.cpu_count() or cpus)),
                    host_idle_s=idle)


EXEC_GRACE_S = 30.0  # a command returns at most this long after its timeout (Sandbox.exec's socket deadline)


def admission_wait(timeout: float) -> float:
    """Seconds a grading with test timeout ``timeout`` (s) waits for a slot: longer than any grading of the same
    timeout holds one. A holder runs pytest at most twice (the files-whole rerun after exit 4), each returning at
    most ``EXEC_GRACE_S`` past ``timeout``; waiting only ``timeout`` (eleventh pass) let a burst of submissions
    that hold their slots that long (a conftest that exits 4 just before the deadline, then a hang) make every
    grading that came right after it wait past its bound: GradingError, no reward for innocent episodes."""
    return 2 * (timeout + EXEC_GRACE_S) + EXEC_GRACE_S


@contextlib.contextmanager
def admitted(cpus: float, wait_s: float, *, slot_dir: Path | None = None, host_cpus: int | None = None):
    """Hold ``ceil(cpus)`` of the host's ``GRADINGS_PER_CPU x host_cpus`` grading slots (default: this host's
    CPUs) while the block runs (module doc): all at once or none (a grading never sits on part of what it
    needs). Waits for them up to ``wait_s`` seconds, then raises :class:`AdmissionError`."""
    folder = slot_dir or SLOT_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AdmissionError(f"cannot make the grading slot folder {folder}: {err}; fix: make it writable or set "
                             "LIGHTSWE_CACHE to a writable folder") from None
    total = GRADINGS_PER_CPU * (host_cpus or os.cpu_count() or 1)
    need = min(total, max(1, math.ceil(cpus)))
    deadline = time.monotonic() + wait_s
    held: list[int] = []
    try:
        while True:
            for slot in range(total):
                try:
                    fd = os.open(folder / str(slot), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                except OSError as err:
                    raise AdmissionError(f"cannot open the grading slot {folder / str(slot)}: {err}; fix: make "
                                         "the folder writable or set LIGHTSWE_CACHE to a writable folder") from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                held.append(fd)
                if len(held) == need:
                    break
            if len(held) == need:
                break
            while held:  # part of it: give it back, so two waiting gradings cannot hold each other's half
                os.close(held.pop())
            if time.monotonic() >= deadline:
                raise AdmissionError(f"no grading slot came free in {wait_s:g} s: this host "
                                     f"({total // GRADINGS_PER_CPU} CPUs) runs {total} CPUs of grading quota at "
                                     "once and all were taken; fix: run fewer episodes at once on this host")
            time.sleep(0.2)
        yield
    finally:
        for fd in held:
            os.close(fd)
