"""A host uid of its own for each sandbox's agent user, so that no two sandboxes share a per-user kernel limit.

Why: Docker runs every container in the host's user namespace, and the kernel counts some resources per *user*
(``struct ucounts`` of the initial user namespace), not per container: inotify instances
(``fs.inotify.max_user_instances``, 128 here) and watches (``max_user_watches``), epoll watches
(``fs.epoll.max_user_watches``), POSIX message-queue bytes (``RLIMIT_MSGQUEUE``), queued signals
(``RLIMIT_SIGPENDING``), processes (``RLIMIT_NPROC``), locked memory of the user. With every sandbox's ``agent``
as uid 1000, one episode holding them all (a process left running) made the same calls fail in every other
sandbox on the host, agent's and grading's: an honest fix graded 0.0 because a neighbour exhausted a counter.

The fix for the whole kind: each sandbox's ``agent`` is a uid no other live sandbox on this host has, leased
here from ``UID_RANGE`` (above the ranges ``useradd`` and ``/etc/subuid`` hand out first, below the 7 octal
digits of a ustar header). A lease is an exclusive ``flock`` on ``$LIGHTSWE_CACHE/uids/<uid>``: it holds across
processes (Ray workers, several ``rollout`` runs on one host) and is released by the kernel when its process
dies. A uid is also refused while a container labelled with it exists (the container of a killed process,
until :func:`lightswe.envs.sandbox.reap_orphans` removes it, still runs that uid's processes). Within a
sandbox the agent can still exhaust its own counters: that is its own episode's doing.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

from lightswe.envs.engine import CACHE_DIR
from lightswe.envs.locks import try_lock
from lightswe.errors import InfrastructureError

UID_RANGE = (1_200_000, 2_000_000)  # [first, last): 800,000 uids
UID_LABEL = "lightswe.uid"  # the container label naming its agent's leased uid
LEASE_DIR = CACHE_DIR / "uids"
_ATTEMPTS = 64


class UidError(InfrastructureError):
    """No uid could be leased (the lease folder cannot be written, or every attempt collided)."""


class UidLease:
    """An exclusive host uid (``.uid``, an int in ``UID_RANGE``) until :meth:`release` or the process ends.

    ``in_use(uid) -> bool`` is asked after the lock is held (e.g. "does a container carry this uid?"); a uid it
    claims is skipped; what it raises is raised, with the uid's lock given back. Raises :class:`UidError` when
    no uid is had in 64 attempts."""

    def __init__(self, in_use: Callable[[int], bool] | None = None, *, lease_dir: Path | None = None) -> None:
        self.dir = lease_dir or LEASE_DIR
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UidError(f"cannot make the uid lease folder {self.dir}: {err}; fix: make it writable or set "
                           "LIGHTSWE_CACHE to a writable folder") from None
        self.uid, self._fd, self._path = 0, -1, None
        rng = random.SystemRandom()
        for _ in range(_ATTEMPTS):
            uid = rng.randrange(*UID_RANGE)
            fd = self._lock(self.dir / str(uid))
            if fd < 0:
                continue
            try:
                busy = in_use is not None and in_use(uid)
            except BaseException:  # e.g. the engine did not answer: the uid is not leased, its lock not kept
                self._unlock(self.dir / str(uid), fd)
                raise
            if busy:
                self._unlock(self.dir / str(uid), fd)
                continue
            self.uid, self._fd, self._path = uid, fd, self.dir / str(uid)
            return
        raise UidError(f"no free uid in {UID_RANGE} after {_ATTEMPTS} attempts (lease folder {self.dir}); fix: "
                       "remove stopped lightswe containers (`docker ps -a --filter label=lightswe.sandbox=1`)")

    @staticmethod
    def _lock(path: Path) -> int:
        """An fd holding an exclusive lock on ``path`` (created), or -1 when another holds it. The file is
        unlinked at release; a lock taken on a file unlinked meanwhile is not the lease (:func:`try_lock`)."""
        try:
            fd = try_lock(path)
        except OSError as err:
            raise UidError(f"cannot open the uid lease {path}: {err}; fix: make the folder writable or set "
                           "LIGHTSWE_CACHE to a writable folder") from None
        return -1 if fd is None else fd

    @staticmethod
    def _unlock(path: Path, fd: int) -> None:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Give the uid back (idempotent). Call it after the container using it is removed."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._unlock(self._path, fd)

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown
            pass


def rewrite_ids(text: str, old: int, new: int) -> str:
    """``/etc/passwd`` or ``/etc/group`` text with id ``old`` (uid and gid fields) replaced by ``new``; a
    passwd without a line for ``old`` is returned unchanged (no agent user: nothing to move)."""
    lines = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2] == str(old):
            fields[2] = str(new)
        if len(fields) >= 7 and fields[3] == str(old):  # passwd: the primary group
            fields[3] = str(new)
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"
