"""Host-wide exclusive locks on files: the one ``open`` + ``flock`` of the uid leases (:mod:`lightswe.envs.uids`)
and the grading slots and queue tickets (:mod:`lightswe.envs.starvation`).

An ``flock`` (``flock(2)``) belongs to an open file description: it excludes other processes and other opens in
the same process (threads), and the kernel gives it back when its holder dies, so a killed process never keeps
what it held. Lock files that are removed at release (uid leases, queue tickets) race with a locker that opened
the file before the unlink and locked it after: :func:`try_lock` checks that the path still names the file it
locked (the usual lock-file race), so such a lock is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path`` (created 0600 when missing, ``O_CLOEXEC``), or None when
    another open holds it or ``path`` was unlinked or replaced meanwhile. Close the fd to release. Raises
    ``OSError`` when ``path`` cannot be opened (callers say which folder to fix)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def held(path: Path):
    """Hold an exclusive lock on ``path`` (created when missing) while the block runs, waiting for it (a short
    critical section shared by every process of the host). Raises ``OSError`` when ``path`` cannot be opened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
