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
less than a quarter of its CPU quota (``cpus x T``). A hang is never starved: a sleeping or blocked process is
not runnable (no pressure), and a busy loop gets its quota whenever the host has CPU to give (its own threads
competing for its quota are throttled only after using it: usage at the quota). Only a host that gives the
container under a quarter of a CPU while it wants one makes a starved run; grading then reruns the tests once
in another fresh container, and a second starved run is the machine's failure (``GradingError``, no reward).

On a host where the counters cannot be read (a remote engine, cgroup v1 without the unified hierarchy, no PSI)
:func:`cgroup_dir` is None and a timeout stays the policy's failure, as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
WAITED_AT_LEAST = 0.5  # of the run's wall time, waiting for a CPU
GOT_AT_MOST = 0.25  # of the CPU quota over the run


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Cumulative counters of a cgroup at one moment: ``usage_s`` of CPU, ``waiting_s`` of PSI cpu ``some``."""

    usage_s: float
    waiting_s: float
    at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class CpuShare:
    """What a container got over an interval: ``wall_s``, ``cpu_s`` (CPU time), ``waiting_s`` (runnable but
    waiting for a CPU), ``cpus`` (its quota, CPUs)."""

    wall_s: float
    cpu_s: float
    waiting_s: float
    cpus: float

    @property
    def starved(self) -> bool:
        """Waited for a CPU at least half the time while getting under a quarter of its quota (module doc)."""
        return (self.wall_s > 0 and self.waiting_s >= WAITED_AT_LEAST * self.wall_s
                and self.cpu_s < GOT_AT_MOST * self.cpus * self.wall_s)

    def __str__(self) -> str:
        return (f"{self.cpu_s:.1f} s of CPU in {self.wall_s:.1f} s (quota {self.cpus:g} CPU), "
                f"{self.waiting_s:.1f} s waiting for a CPU")


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
        return CpuSample(usage_s=int(stat["usage_usec"]) / 1e6, waiting_s=waiting_us / 1e6, at=time.monotonic())
    except (OSError, KeyError, ValueError, StopIteration):
        return None


def share(before: CpuSample | None, after: CpuSample | None, cpus: float) -> CpuShare | None:
    """What the container got between two samples (None when either is missing)."""
    if before is None or after is None:
        return None
    return CpuShare(wall_s=after.at - before.at, cpu_s=after.usage_s - before.usage_s,
                    waiting_s=after.waiting_s - before.waiting_s, cpus=cpus)
