"""Whether a container got the CPU it was promised: a failing test run told apart from a starved one.

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
starved timed-out run is the machine's failure (``GradingError``, no reward).

Why the graded code cannot choose where it waits (tenth adversarial pass): the waiting is the container's,
and the code it runs could choose the CPU it waits on. Pinned to CPU 0 (``os.sched_setaffinity(0, {0})``,
unprivileged) beside a neighbour burning that CPU at four gradings' weight, a hang got 1.1 s and 1.6 s of CPU
in its 8.1 s runs, waiting about 6 s of each: "starved", rerun, starved again, and a failing fix came back as
the machine's failure (no reward) instead of 0.0 -- a policy that learns it hides its failures from the learner.
Now (1) no command in a sandbox can change its CPU affinity (the runner's seccomp filter,
:func:`lightswe.envs.runner.lock_affinity`): the same hang got 1.7-3.8 s of CPU (three runs) and was 0.0; and
(2) waiting while the host leaves CPU idle is never starvation (whatever made the container wait, the host had
CPU to give). ``cpus`` past the host's CPU count is capped at it.

**Failing by a test's own deadline** (grade6): a correct fix's tests may carry deadlines of their own -- a
``signal.alarm``/``setitimer`` handler, an assertion on the elapsed time, a subprocess or future with a
timeout, pytest-timeout -- that a starved host makes fail while the run as a whole ends in time: a correct fix
was 0.0. Judging every failing run by the whole-run rule (tenth pass, tried) drops too much: a deterministic
failure on a loaded host (the tenth pass saw one), and a fix that sleeps past a test's deadline (not runnable:
no pressure) in a run whose other seconds were starved (measured: starved overall).
So the counters are sampled every ``SAMPLE_S`` during the run (:func:`sampled`), and a failing run that did
not time out is the host's when it was starved over the whole run **and no second of it clears the host**
(:func:`starved_failure`): no window of ``WINDOW_S`` (1 s) in which the container wanted the CPU (ran or waited
for one) under half the time (its code slept or blocked) or the host had a quarter of its quota idle.
Windows in which it got its quarter do not clear the host: on a loaded host the scheduler gives lucky seconds
(0.26 and 0.38 s of CPU in one second of runs that otherwise got 0.07; 2 or 3 of 4 deadline tests failed), and
the failing test's deadline lay in the other seconds. A fix slow by itself stays 0.0: one that sleeps or
blocks past a deadline wanted no CPU for that time (a window that clears the host; the idle edges of the
sampled span, the harness's own steps, are left out, and the code cannot move its sleep outside pytest's own
work); a busy loop gets its quarter of a CPU whenever the host has it to give (not starved over the run: 0.0).
Such a run is rerun once in a fresh container (as a timed-out one), and **the rerun's verdict stands**, starved
or not: 1.0 where the rerun's deadlines held, 0.0 where it failed again. A failing run starved twice is NOT the
machine's failure (unlike a timeout starved twice): grade6 first made it ``GradingError`` (no reward), and the
lead's main-job check (`python -m lightswe train` on this 2-CPU host) then turned 2 of a step's 16 episodes that
submitted no change at all into reward None: a deterministic failure on a loaded host fails starved or not, and
dropping it pays a failing policy with no score, which the learner drops, instead of 0.0. Where a host starves
every run, a correct fix failed by its own deadline can still be 0.0 (the rerun is its second chance); the
rerun and its reason (``Grade.reruns``, "failed starved of CPU twice") show it. A run that passed is 1.0
whatever the load.

**Admission** (:func:`admitted`, around every test run where starvation is judged). Graders outweigh the
agents' containers (``cpu_shares``), so what can starve a grading is other gradings and the host's own work.
A policy whose many episodes submit spinning code at once could saturate a host that runs more gradings than
a quarter of a CPU each can have: every one "starved", its hang no reward instead of 0.0. The rule:

- *How many*: at most ``GRADINGS_PER_CPU`` = 2 CPUs of grading quota per host CPU. The judgment's threshold is
  a quarter of the quota (``GOT_AT_MOST``); at 4 per CPU (tenth pass) gradings alone left each exactly a
  quarter, so any other load (one busy agent container, the engine, the harness) put every spinning hang under
  it: no reward instead of 0.0. At 2 per CPU gradings alone leave each at least half its quota, twice the
  threshold: other load must take more than half of what the gradings would get to push one under a quarter.
  Each grading container weighs ``GRADING_CPU_SHARES`` per CPU of its quota (:func:`grading_shares`): with one
  weight for all, a 2-CPU grading among 1-CPU ones got a 1-CPU share, under a quarter of its quota with the
  slots full. The price: half the gradings a host runs at once; the others wait their turn.
- *In order*: a grading takes a ticket (a file in ``grading-slots/queue`` named by a number one past the
  highest, made and ``flock``-ed under the queue's lock); only the oldest live ticket may take slots, all it
  needs at once or none, so a late grading never overtakes an early one and one needing 2 CPUs is not passed
  over forever by 1-CPU ones. Polling, not a kernel queue: ``flock`` has no FIFO.
- *How long*: every holder declares the longest it holds its slots (:func:`admission_hold` of its own
  timeout: two pytest runs, each up to ``EXEC_GRACE_S`` past it). A grading waits its turn however long the
  queue: the queue moves as long as holders keep their word. It gives up (:class:`AdmissionError`: the
  machine's failure) only when no grading of the host took a slot and none ahead of it left the queue for longer
  than the longest hold declared plus the grace: a grading stuck past every bound the harness sets. The
  waiter's own timeout is no bound: with mixed timeouts a 60-s grading behind 900-s ones waited 210 s
  (``2 (t + 30) + 30``, eleventh pass) and failed, no reward for an innocent episode.
- *No slot held by the dead*: slots and tickets are ``flock``-s (:mod:`lightswe.envs.locks`), given back by
  the kernel when their holder dies; a ticket whose lock is free is a dead waiter's and the next waiter
  removes it.

Only where starvation is judged (the engine's host is this one: :func:`cgroup_dir`).

On a host where the counters cannot be read (a remote engine, cgroup v1 without the unified hierarchy, no PSI)
:func:`cgroup_dir` is None and a timeout stays the policy's failure, as before; so it does in a grading
container whose runner could not prove its affinity lock (``Sandbox.affinity_locked`` False: no seccomp, no
ctypes, an arch the filter does not know; eleventh pass).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lightswe.envs.engine import CACHE_DIR
from lightswe.envs.locks import held, try_lock
from lightswe.errors import InfrastructureError

CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
PROC_STAT = Path("/proc/stat")
WAITED_AT_LEAST = 0.5  # of the run's wall time, waiting for a CPU
GOT_AT_MOST = 0.25  # of the CPU quota over the run
GRADINGS_PER_CPU = 2  # CPUs of grading quota admitted per host CPU (half of 1 / GOT_AT_MOST: module doc)
GRADING_CPU_SHARES = 8192  # a grading container's CPU weight per CPU of its quota (agents' containers: 1024)
WINDOW_S = 1.0  # a failing run is not the host's when one window this long clears it (module doc)
SAMPLE_S = 0.1  # how often the counters are read during a test run
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


@dataclass(kw_only=True, slots=True)
class CpuSeries:
    """The counters of one test run's container sampled every ``SAMPLE_S`` (:func:`sampled`): ``samples`` in
    time order, ``complete`` when the last was read after the run ended (a container that vanished mid-run
    leaves an incomplete series: no evidence)."""

    samples: list[CpuSample] = field(default_factory=list)
    complete: bool = False

    def share(self, cpus: float) -> CpuShare | None:
        """What the container got over the whole run (None without a complete series)."""
        if not self.complete or len(self.samples) < 2:
            return None
        return share(self.samples[0], self.samples[-1], cpus)

    def windows(self, cpus: float, window_s: float = WINDOW_S) -> list[CpuShare]:
        """What it got in each window of at least ``window_s`` seconds that starts at a sample (the shortest such
        window from each sample, sliding); a run shorter than ``window_s`` is one window, the whole run."""
        if not self.complete or len(self.samples) < 2:
            return []
        found, j = [], 0
        for i, first in enumerate(self.samples):
            j = max(j, i + 1)
            while j < len(self.samples) and self.samples[j].at - first.at < window_s:
                j += 1
            if j == len(self.samples):
                break
            found.append(share(first, self.samples[j], cpus))
        return found or [self.share(cpus)]

    def cleared(self, cpus: float, window_s: float = WINDOW_S) -> CpuShare | None:
        """The first window that clears the host of a failing run (module doc): the container wanted the CPU
        (ran or waited for one) under half of it (its code slept or blocked), or the host
        had a quarter of its quota idle; None when there is none. The idle stretches before the run's first
        and after its last busy moment (the harness's own steps around the test command) are left out."""
        busy = [i for i, (a, b) in enumerate(zip(self.samples, self.samples[1:]))
                if (b.usage_s - a.usage_s) + (b.waiting_s - a.waiting_s) >= 0.1 * (b.at - a.at)]
        if not self.complete or not busy:
            return None
        trimmed = CpuSeries(samples=self.samples[busy[0]:busy[-1] + 2], complete=True)
        for window in trimmed.windows(cpus, window_s):
            slept = window.waiting_s + window.cpu_s < WAITED_AT_LEAST * window.wall_s
            if slept or (window.host_idle_s or 0.0) >= GOT_AT_MOST * window.cpus * window.wall_s:
                return window
        return None


@contextlib.contextmanager
def sampled(folder: Path | None, every_s: float = SAMPLE_S):
    """Sample ``folder``'s counters (:func:`sample`) every ``every_s`` seconds in a thread while the block runs;
    yields the :class:`CpuSeries` (empty when ``folder`` is None or unreadable), complete after the block."""
    series = CpuSeries()
    first = sample(folder)
    if first is None:
        yield series
        return
    series.samples.append(first)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            got = sample(folder)
            if got is None:  # the container is gone: the run's end says what happened
                return
            series.samples.append(got)

    thread = threading.Thread(target=loop, name="lightswe-cpu-sampler", daemon=True)
    thread.start()
    try:
        yield series
    finally:
        stop.set()
        thread.join()
        last = sample(folder)
        if last is not None:
            series.samples.append(last)
            series.complete = True


def starved_failure(series: CpuSeries, cpus: float, *, timed_out: bool) -> CpuShare | None:
    """The evidence that the host, not the code, failed a test run that did not pass (module doc): the whole
    run's share, or None.

    A run that hit the harness's timeout: starved over the whole run (its deadline is the whole run's). Any
    other failing run (a test's own deadline: ``signal.alarm``, an elapsed-time assertion, a subprocess or
    future timeout, pytest-timeout): starved over the whole run, and no window of ``WINDOW_S`` clears the host
    (:meth:`CpuSeries.cleared`: the code slept, or the host had CPU to give)."""
    whole = series.share(cpus)
    if whole is None or not whole.starved:
        return None
    if timed_out:
        return whole
    return whole if series.cleared(cpus) is None else None


EXEC_GRACE_S = 30.0  # a command returns at most this long after its timeout (Sandbox.exec's socket deadline)


def admission_hold(timeout: float) -> float:
    """Seconds a grading with test timeout ``timeout`` (s) may hold its slots: pytest runs at most twice (the
    files-whole rerun after exit 4), each returning at most ``EXEC_GRACE_S`` past ``timeout``."""
    return 2 * (timeout + EXEC_GRACE_S)


def grading_shares(cpus: float) -> int:
    """The grading container's ``cpu_shares`` for a quota of ``cpus`` CPUs: ``GRADING_CPU_SHARES`` per CPU of
    quota (at least one), at most the engine's 262,144; gradings then share the CPU in proportion to their
    quotas (module doc)."""
    return int(min(262_144, GRADING_CPU_SHARES * max(1.0, cpus)))


@contextlib.contextmanager
def admitted(cpus: float, wait_s: float | None = None, *, hold_s: float | None = None,
             slot_dir: Path | None = None, host_cpus: int | None = None, poll_s: float = 0.1):
    """Hold ``ceil(cpus)`` of the host's ``GRADINGS_PER_CPU x host_cpus`` grading slots (default: this host's
    CPUs) while the block runs, all at once or none, in the order the gradings asked (a ticket: module doc).

    ``hold_s``: the longest this grading holds them (:func:`admission_hold` of its test timeout; default: that
    of a 900-s timeout), declared to the waiters. ``wait_s``: a cap on the wait (default none: its turn). Raises
    :class:`AdmissionError` when no grading on the host took or gave back a slot for longer than the longest
    hold any holder declared plus ``EXEC_GRACE_S`` (a stuck host), or after ``wait_s`` seconds when given, or
    when the slot folder cannot be written."""
    folder = slot_dir or SLOT_DIR
    queue = folder / "queue"
    hold_s = admission_hold(900.0) if hold_s is None else hold_s
    try:
        queue.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AdmissionError(f"cannot make the grading slot folder {queue}: {err}; fix: make it writable or set "
                             "LIGHTSWE_CACHE to a writable folder") from None
    total = GRADINGS_PER_CPU * (host_cpus or os.cpu_count() or 1)
    need = min(total, max(1, math.ceil(cpus)))
    started = time.monotonic()
    held_fds: list[int] = []
    ticket: Path | None = None
    ticket_fd: int | None = None
    try:
        with _queue_locked(folder):
            numbers = [int(name) for name in os.listdir(queue) if name.isdigit()]
            ticket = queue / f"{max(numbers, default=0) + 1:020d}"
            ticket_fd = _try_lock(ticket)
            if ticket_fd is None:  # a new name under the queue lock: nobody else can hold it
                raise AdmissionError(f"the grading ticket {ticket} is locked by another process; fix: remove "
                                     f"{queue}")
        seen, since = None, time.monotonic()
        while True:
            with _queue_locked(folder):
                ahead = _oldest_live_ticket(queue, ticket)
                if ahead is None:
                    held_fds = _take_slots(folder, total, need)
                    if held_fds:
                        _declare(folder, held_fds, hold_s, total)
                        ticket.unlink(missing_ok=True)
                        os.close(ticket_fd)
                        ticket_fd = ticket = None
                        break
                serial, limit = _progress(folder, hold_s)
            now = time.monotonic()
            if (ahead, serial) != seen:  # a grading was admitted, or the one ahead left the queue
                seen, since = (ahead, serial), now
            if now - since > limit:
                raise AdmissionError(f"no grading slot of this host was taken or given back in {now - since:.0f} "
                                     f"s, longer than any holder declared it would hold one ({limit:.0f} s with "
                                     "the grace): a grading is stuck (the engine hung?); fix: check the engine "
                                     "(`docker ps`) and the processes holding files of " + str(folder))
            if wait_s is not None and now - started >= wait_s:
                raise AdmissionError(f"no grading slot came free in {wait_s:g} s: this host "
                                     f"({total // GRADINGS_PER_CPU} CPUs) runs {total} CPUs of grading quota at "
                                     f"once, all were taken{' and older gradings waited' if ahead else ''}; fix: "
                                     "run fewer episodes at once on this host")
            time.sleep(poll_s)
        yield
    finally:
        for fd in held_fds:
            os.close(fd)
        if ticket_fd is not None:
            try:
                with _queue_locked(folder):
                    ticket.unlink(missing_ok=True)
            except AdmissionError:
                pass  # the next waiter removes a ticket whose lock is free
            os.close(ticket_fd)


def _try_lock(path: Path) -> int | None:
    try:
        return try_lock(path)
    except OSError as err:
        raise AdmissionError(f"cannot open the grading lock {path}: {err}; fix: make the folder writable or set "
                             "LIGHTSWE_CACHE to a writable folder") from None


@contextlib.contextmanager
def _queue_locked(folder: Path):
    try:
        lock = held(folder / "queue.lock")
        lock.__enter__()
    except OSError as err:
        raise AdmissionError(f"cannot lock the grading queue {folder / 'queue.lock'}: {err}; fix: make the folder "
                             "writable or set LIGHTSWE_CACHE to a writable folder") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _oldest_live_ticket(queue: Path, ticket: Path) -> str | None:
    """The oldest ticket older than ``ticket`` whose waiter lives, or None (under the queue lock); the tickets of
    dead waiters (their lock free) met before it are removed. One live ticket ahead is enough to wait, so a
    poll costs a lock attempt or two, not one per waiter."""
    for name in sorted(n for n in os.listdir(queue) if n.isdigit() and n < ticket.name):
        fd = _try_lock(queue / name)
        if fd is None:
            return name
        (queue / name).unlink(missing_ok=True)
        os.close(fd)
    return None


def _take_slots(folder: Path, total: int, need: int) -> list[int]:
    """``need`` slot locks, or none (a grading never sits on part of what it needs)."""
    fds: list[int] = []
    for slot in range(total):
        fd = _try_lock(folder / str(slot))
        if fd is not None:
            fds.append(fd)
            if len(fds) == need:
                return fds
    for fd in fds:
        os.close(fd)
    return []


def _declare(folder: Path, fds: list[int], hold_s: float, total: int) -> None:
    """Write the holder's hold into its slots and bump the host's admission serial (under the queue lock); the
    serial file also says the longest hold any slot declares (stale declarations of free slots included: a
    waiter's patience errs long)."""
    for fd in fds:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {hold_s:.3f}\n".encode(), 0)
    longest = hold_s
    for slot in range(total):
        try:
            longest = max(longest, float((folder / str(slot)).read_text().split()[1]))
        except (OSError, IndexError, ValueError):
            continue
    serial, _ = _progress(folder, hold_s)
    temp = folder / f".progress.{os.getpid()}"
    temp.write_text(f"{serial + 1} {longest:.3f}\n")
    os.replace(temp, folder / "progress")


def _progress(folder: Path, hold_s: float) -> tuple[int, float]:
    """(the host's admission serial, how long a waiter waits for the next admission: the longest declared
    hold, at least ``hold_s``, plus ``EXEC_GRACE_S``)."""
    try:
        serial, longest = (folder / "progress").read_text().split()[:2]
        return int(serial), max(float(longest), hold_s) + EXEC_GRACE_S
    except (OSError, ValueError):
        return 0, hold_s + EXEC_GRACE_S
