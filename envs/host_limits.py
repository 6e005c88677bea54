"""Kernel limits global to the host, which no sandbox may exhaust for the others.

Why: Docker's containers share one kernel, and some of its counters are neither per container nor per user
(those are :mod:`lightswe.envs.uids`' kind) but host-wide. Measured from one sandbox, as the agent, with a
process left running: ``os.openpty()`` 3,071 times took every pseudo-terminal containers may have
(``kernel.pty.max`` 4,096 less the 1,024 reserved for the host): ``openpty`` failed with ENOSPC in every other
sandbox; ``io_setup(65536)`` took the host's whole ``fs.aio-max-nr``: ``io_setup`` failed with EAGAIN in every
other sandbox. ``fs.file-max`` (2.4 M open files here; root is exempt, so the engine carries on) is the same
kind: 256 processes of 20,000 descriptors each is 5.1 M, within a sandbox's limits. An honest fix whose tests
open a terminal, a file or an AIO context was graded 0.0 next to such a neighbour.

The fix, for each counter, makes the per-sandbox limits bind before the global one:

- ``fs.file-max`` and ``fs.aio-max-nr`` are raised (:func:`raise_host_limits`, once per process, as root) to
  values no set of sandboxes reaches: each open file and each AIO ring is charged to its container's memory
  cgroup, so a sandbox's memory limit bounds them (systemd sets ``fs.file-max`` to ``LONG_MAX`` for this
  reason);
- pseudo-terminals are not charged that way: each sandbox gets a ``devpts`` instance of its own with at most
  ``PTYS_PER_SANDBOX`` terminals (:func:`mount_ptys`, bound at ``/dev/pts``; ``/dev/ptmx`` points there), and
  ``kernel.pty.max`` is raised to the kernel's ceiling (1,048,576): 4,092 sandboxes' worth;
- ``kernel.pid_max`` is raised to its ceiling (4,194,304): a sandbox holds at most ``pids_limit`` (256).

A limit already higher is left as it is; a host where they cannot be written (not root) keeps its values and
says so once (``log.warning``).
"""

from __future__ import annotations

import logging
import subprocess
import threading
from pathlib import Path

log = logging.getLogger(__name__)

PTYS_PER_SANDBOX = 256
# /proc/sys path -> the value to raise it to (never lowered)
SYSCTLS = {"fs/file-max": 2**63 - 1, "fs/aio-max-nr": 2**40, "kernel/pty/max": 1 << 20, "kernel/pid_max": 1 << 22}
_DONE: dict[str, tuple[int, int]] | None = None
_LOCK = threading.Lock()


def raise_host_limits(proc_sys: Path = Path("/proc/sys")) -> dict[str, tuple[int, int]]:
    """Raise each of :data:`SYSCTLS` that is lower (once per process); ``{name: (old, new)}`` of those
    raised. A value that cannot be read or written is logged once and kept."""
    global _DONE
    with _LOCK:
        if _DONE is not None:
            return _DONE
        raised, failed = {}, []
        for name, wanted in SYSCTLS.items():
            path = proc_sys / name
            try:
                old = int(path.read_text().split()[0])
                if old < wanted:
                    path.write_text(str(wanted))
                    raised[name] = (old, int(path.read_text().split()[0]))
            except (OSError, ValueError, IndexError) as err:
                failed.append(f"{name.replace('/', '.')} ({err})")
        if failed:
            log.warning("host-wide kernel limits not raised: %s; one sandbox can exhaust them for the others; "
                        "fix: run as root on the engine's host, or raise them with sysctl", ", ".join(failed))
        _DONE = raised
        return raised


def mount_ptys(target: Path, max_ptys: int = PTYS_PER_SANDBOX) -> None:
    """Mount a new ``devpts`` instance at ``target`` holding at most ``max_ptys`` terminals (``ptmxmode=0666``:
    the container's ``/dev/ptmx`` links to its ``ptmx``). Raises OSError when ``mount`` fails."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "devpts", "-o",
                           f"newinstance,ptmxmode=0666,mode=0620,gid=5,max={max_ptys},nosuid,noexec",
                           "devpts", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"mounting a devpts instance at {target} failed: {done.stderr.strip()[-300:]}")
