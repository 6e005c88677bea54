"""A sandbox's disk write limit: Docker's own quota where the storage driver has one, else a loop volume.

Which mechanism applies (:func:`disk_mode`, decided once per process and engine):

- ``"storage-opt"``: the engine's storage driver enforces ``--storage-opt size=`` (overlay2 on xfs mounted
  with ``pquota``, btrfs, zfs); the container's root file system is the limit.
- ``"loop"``: every other local engine when this process is root (overlay2 on ext4, the usual case): each
  sandbox gets a fixed-size ext4 file system in a sparse file (``mkfs.ext4``, mounted with ``-o loop``, which
  frees the loop device at unmount), and its sub-directories are bind-mounted at the only paths the agent can
  write (``/testbed``, ``/home/agent``, ``/tmp``, ``/var/tmp``) while the container's root file system is
  read-only. ``fallocate -l 12G`` and a million small files both end in ``ENOSPC`` (blocks and inodes are
  finite); ``/dev/shm`` is a tmpfs counted in the memory limit. The image's ``/testbed`` and ``/home/agent``
  are copied into a template volume once per image (``get_archive`` of a created, never started container);
  each sandbox starts from a sparse copy of it (``cp --sparse=always``: only written blocks are copied).
  ``destroy()`` unmounts and deletes the file, so the host's space is back.
- ``"none"``: a remote engine, an engine in another mount namespace, or a non-root process: no hard limit (each command still gets ``RLIMIT_FSIZE``
  = the limit, which stops one large file but not many small ones); :func:`disk_mode` says so once.

Volumes live in ``$LIGHTSWE_CACHE/volumes/<owner pid>-<owner start>-<random>/`` so that :func:`reap_volumes`
can remove those of dead owners (a killed process cannot unmount its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

from lightswe.envs import host_limits
from lightswe.envs.engine import AGENT_UID, CACHE_DIR
from lightswe.envs.uids import rewrite_ids
from lightswe.errors import InfrastructureError, UserInputError

log = logging.getLogger(__name__)

VOLUME_DIR = CACHE_DIR / "volumes"
TEMPLATE_DIR = CACHE_DIR / "volume-templates"
# sub-directory of the volume -> path in the container, (owner uid, mode); the image's content is copied for
# the first two
WRITABLE = {"testbed": ("/testbed", AGENT_UID, 0o755), "home": ("/home/agent", AGENT_UID, 0o755),
            "tmp": ("/tmp", 0, 0o1777), "vartmp": ("/var/tmp", 0, 0o1777)}
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
_MODE: dict[str, str] = {}
_MODE_LOCK = threading.Lock()


class DiskError(InfrastructureError):
    """A sandbox volume could not be made or removed (mkfs, mount, copy); says which step and why."""


def parse_size(text: str) -> int:
    """Bytes of a Docker-style size (``"4g"``, ``"512m"``, ``"1073741824"``); UserInputError if malformed."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise UserInputError(f"disk_limit {text!r} is not a size; fix: write e.g. '4g', '512m' or a byte count")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size < 64 * 1024 ** 2:
        raise UserInputError(f"disk_limit {text!r} is below 64 MiB; fix: give at least '64m' (ext4 needs room)")
    return size


def _same_host_mounts(client) -> bool:
    """True when the engine is local and sees this process's mounts (same mount namespace as ``dockerd``).

    A bind mount of a host folder the engine cannot see would give the sandbox an empty ``/testbed``; so a
    remote engine, an engine in another namespace (lightswe inside a container with the socket mounted) or
    an unknown ``dockerd`` pid all mean no loop volumes.
    """
    base = str(getattr(client.api, "base_url", ""))
    if not (base.startswith("http+docker://localhost") or base.startswith("http+docker://localunixsocket")):
        return False
    for pidfile in ("/run/docker.pid", "/var/run/docker.pid"):
        try:
            pid = int(Path(pidfile).read_text().strip())
            return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
        except (OSError, ValueError):
            continue
    return False


def _driver_quota(client) -> bool:
    """True when the engine's storage driver can enforce ``--storage-opt size=`` (see :func:`quota_driver`)."""
    return quota_driver(client.api.info())


def quota_driver(info: dict) -> bool:
    """Whether a storage driver, as ``docker info`` reports it (``Driver``, ``DriverStatus`` pairs), enforces
    ``--storage-opt size=``: btrfs and zfs always; overlay2 only on an xfs backing file system (which must also be
    mounted with ``pquota``: that is not visible here, so the engine's refusal at create is the fallback, see
    :func:`disk_mode`); every other driver (overlay2 on ext4 ``extfs``, vfs, fuse-overlayfs, ...) never."""
    driver = info.get("Driver", "")
    status = dict(info.get("DriverStatus") or [])
    if driver in ("btrfs", "zfs"):
        return True
    return driver in ("overlay2", "overlay") and status.get("Backing Filesystem", "").lower() == "xfs"


def disk_mode(client, *, no_quota: bool = False) -> str:
    """``"storage-opt"``, ``"loop"`` or ``"none"`` for this engine (see the module docstring); cached.

    ``no_quota=True`` decides again without Docker's quota (the engine refused ``--storage-opt size=``, e.g.
    xfs mounted without ``pquota``).
    """
    key = str(getattr(client.api, "base_url", ""))
    with _MODE_LOCK:
        if key in _MODE and not (no_quota and _MODE[key] == "storage-opt"):
            return _MODE[key]
        forced = os.environ.get("LIGHTSWE_DISK_MODE", "")
        if forced and not no_quota:
            if forced not in ("storage-opt", "loop", "none"):
                raise UserInputError(f"LIGHTSWE_DISK_MODE={forced!r}; fix: one of storage-opt, loop, none")
            mode = forced
        elif not no_quota and _driver_quota(client):
            mode = "storage-opt"
        elif os.geteuid() == 0 and shutil.which("mkfs.ext4") and shutil.which("mount") and _same_host_mounts(client):
            mode = "loop"
        else:
            mode = "none"
            log.warning("sandboxes have no hard disk limit here: the storage driver has no quota and loop volumes "
                        "need a local engine and root (only RLIMIT_FSIZE per file applies); fix: run as root on "
                        "the engine's host, or put /var/lib/docker on xfs with pquota")
        _MODE[key] = mode
        return mode


def _run(*cmd: str, what: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise DiskError(f"{what} failed: `{' '.join(cmd)}` exit {done.returncode}: {done.stderr.strip()[-400:]}")
    return done.stdout


def _mkfs(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
         "-O", "^has_journal", str(path), what="making the sandbox file system")


def _mount(image: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    _run("mount", "-o", "loop,nosuid,nodev", str(image), str(target), what="mounting the sandbox volume")


def _mounted(target: Path) -> bool:
    wanted = str(target.resolve())
    try:
        with open("/proc/self/mounts") as handle:
            return any(line.split()[1] == wanted for line in handle if len(line.split()) > 1)
    except OSError:
        return False


def _unmount(target: Path) -> None:
    if not _mounted(target):
        return
    done = subprocess.run(["umount", str(target)], capture_output=True, text=True)
    if done.returncode != 0:  # still busy (a container being removed): detach now, freed when released
        subprocess.run(["umount", "-l", str(target)], capture_output=True, text=True)


def _copy_from_image(client, image: str, root: Path) -> None:
    """Copy the image's ``/testbed`` and ``/home/agent`` (owners and modes kept) into the volume ``root``."""
    import docker

    created = client.api.create_container(image, command=["true"], labels={"lightswe.volume_template": "1"},
                                          network_disabled=True)
    cid = created["Id"]
    try:
        for name, (inside, uid, mode) in WRITABLE.items():
            target = root / name
            target.mkdir(mode=mode, exist_ok=True)
            os.chown(target, uid, uid)
            os.chmod(target, mode)
            if name not in ("testbed", "home"):
                continue
            try:
                stream, _ = client.api.get_archive(cid, inside + "/.")
            except docker.errors.NotFound:
                continue  # the image has no such directory: an empty one
            tar = subprocess.Popen(["tar", "-x", "-p", "--same-owner", "--numeric-owner", "-C", str(target)],
                                   stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                for chunk in stream:
                    tar.stdin.write(chunk)
            finally:
                tar.stdin.close()
            if tar.wait() != 0:
                raise DiskError(f"unpacking {inside} of {image} into the sandbox volume failed: "
                                f"{tar.stderr.read().decode(errors='replace')[-300:]}")
    finally:
        client.api.remove_container(cid, force=True)


def template(client, image: str, size: int) -> Path:
    """The volume file holding ``image``'s writable directories (made once per image id and size)."""
    image_id = client.api.inspect_image(image)["Id"].split(":")[-1][:24]
    TEMPLATE_DIR.mkdir(parents=True, exist_ok=True)
    path = TEMPLATE_DIR / f"{image_id}-{size}.img"
    if path.exists():
        return path
    with open(TEMPLATE_DIR / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        work = TEMPLATE_DIR / f".{path.name}.{uuid.uuid4().hex[:8]}"
        mnt = Path(f"{work}.mnt")
        try:
            _mkfs(work, size)
            _mount(work, mnt)
            try:
                _copy_from_image(client, image, mnt)
            finally:
                _unmount(mnt)
            os.replace(work, path)
        finally:
            work.unlink(missing_ok=True)
            shutil.rmtree(mnt, ignore_errors=True)
    return path


HOST_RESERVE = 2 * 1024 ** 3  # bytes of the volumes' file system kept free beyond every volume's promise
ADMIT_WAIT_S = 120.0  # how long a new volume waits for room (other sandboxes closing) before DiskError


def reserving() -> bool:
    """Whether volumes are admitted only while the host's disk can keep every promise
    (``LIGHTSWE_DISK_ADMISSION=reserve``; default ``none``: volumes overcommit the host's disk, see
    :func:`admitted`). UserInputError for another value."""
    value = os.environ.get("LIGHTSWE_DISK_ADMISSION", "none").strip() or "none"
    if value not in ("reserve", "none"):
        raise UserInputError(f"LIGHTSWE_DISK_ADMISSION={value!r}; fix: 'reserve' or 'none'")
    return value == "reserve"


def promised_bytes(volume_dir: Path | None = None) -> tuple[int, int]:
    """(bytes, volumes): what the live volumes under ``volume_dir`` may still write on the host: each sparse
    ``disk.img``'s size less the blocks it holds already."""
    total = count = 0
    for image in (volume_dir or VOLUME_DIR).glob("*/disk.img"):
        try:
            st = image.stat()
        except OSError:  # removed meanwhile
            continue
        total += max(0, st.st_size - st.st_blocks * 512)
        count += 1
    return total, count


@contextlib.contextmanager
def admitted(size: int, volume_dir: Path | None = None):
    """Hold the host's admission lock while a volume of ``size`` bytes is made, once the volumes' file system
    can keep every promise: its free bytes, less what the live volumes may still write (:func:`promised_bytes`),
    must hold ``size`` plus ``HOST_RESERVE``. Volumes are sparse: without this, sandboxes that each stayed
    within their limit could fill the host's disk together, and a neighbour's writes within its own limit (and
    the engine's, and the run's own results) failed. Waits up to ``ADMIT_WAIT_S`` for room (sandboxes closing),
    then raises :class:`DiskError` (the machine's failure: the episode gets no reward, never 0.0).

    Only with ``LIGHTSWE_DISK_ADMISSION=reserve`` (:func:`reserving`); otherwise it admits at once. Not the
    default: it caps a host at ``free / disk_limit`` live sandboxes (8 of 4 GiB on this machine, where 30 were
    live at once, warm pools included, promising 120 GiB against 36 GiB free), and most never write."""
    if not reserving():
        yield
        return
    folder = volume_dir or VOLUME_DIR
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + ADMIT_WAIT_S
    with open(folder / ".admission.lock", "w") as lock:
        while True:
            fcntl.flock(lock, fcntl.LOCK_EX)
            st = os.statvfs(folder)
            free = st.f_bavail * st.f_frsize
            promised, count = promised_bytes(folder)
            if free - promised - size >= HOST_RESERVE:
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
                return
            fcntl.flock(lock, fcntl.LOCK_UN)
            if time.monotonic() >= deadline:
                gib = 1024 ** 3
                raise DiskError(f"the host's disk cannot promise {size / gib:.1f} GiB to another sandbox: "
                                f"{free / gib:.1f} GiB free on {folder}, {promised / gib:.1f} GiB promised to "
                                f"{count} live sandbox volume(s), {HOST_RESERVE / gib:.1f} GiB kept for the host; "
                                "fix: run fewer episodes at once, lower disk_limit, or free space there")
            time.sleep(1.0)


_ETC: dict[str, tuple[str, str]] = {}
_ETC_LOCK = threading.Lock()


def image_accounts(client, image: str) -> tuple[str, str]:
    """(``/etc/passwd``, ``/etc/group``) of ``image`` as text (read once per image id and process, from a
    created, never started container)."""
    import io
    import tarfile

    image_id = client.api.inspect_image(image)["Id"]
    with _ETC_LOCK:
        if image_id in _ETC:
            return _ETC[image_id]
    created = client.api.create_container(image_id, command=["true"], labels={"lightswe.volume_template": "1"},
                                          network_disabled=True)
    try:
        texts = []
        for path in ("/etc/passwd", "/etc/group"):
            stream, _ = client.api.get_archive(created["Id"], path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                member = archive.next()
                handle = archive.extractfile(member) if member is not None and member.isfile() else None
                texts.append(handle.read().decode("utf-8", "surrogateescape") if handle else "")
    finally:
        client.api.remove_container(created["Id"], force=True)
    with _ETC_LOCK:
        _ETC[image_id] = (texts[0], texts[1])
    return _ETC[image_id]


class LoopVolume:
    """One sandbox's fixed-size ext4 volume, mounted on the host; ``binds()`` maps it into the container.

    ``uid`` (a leased host uid, :mod:`lightswe.envs.uids`): the image's agent user (uid and gid ``AGENT_UID``)
    becomes ``uid`` in this sandbox: its files in the volume are handed over (``chown --from``, one walk of the
    copy), and ``binds()`` adds ``/etc/passwd`` and ``/etc/group`` of the image with that id rewritten
    (read-only files beside the volume). Each volume also brings the sandbox a ``devpts`` instance of its own
    (at most ``host_limits.PTYS_PER_SANDBOX`` terminals, bound at ``/dev/pts``), and the host-wide kernel limits
    are raised once (:mod:`lightswe.envs.host_limits`)."""

    def __init__(self, client, image: str, size: int, owner: str, uid: int = 0) -> None:
        self.size, self.uid = size, uid
        self.dir = VOLUME_DIR / f"{owner}-{uuid.uuid4().hex[:12]}"
        self.file, self.mnt = self.dir / "disk.img", self.dir / "m"
        source = template(client, image, size)
        accounts = image_accounts(client, image) if uid else None
        self.dir.mkdir(parents=True, exist_ok=False)
        try:
            with admitted(size):
                _run("cp", "--sparse=always", str(source), str(self.file), what="copying the sandbox volume")
            _mount(self.file, self.mnt)
            if uid:
                own = [str(self.mnt / name) for name in ("testbed", "home")]
                _run("chown", "-hR", f"--from={AGENT_UID}", str(uid), *own, what="handing the volume to the uid")
                _run("chown", "-hR", f"--from=:{AGENT_UID}", f":{uid}", *own, what="handing the volume to the gid")
                for name, text in zip(("passwd", "group"), accounts, strict=True):
                    (self.dir / name).write_text(rewrite_ids(text, AGENT_UID, uid), encoding="utf-8",
                                                 errors="surrogateescape")
                    os.chmod(self.dir / name, 0o644)
            host_limits.raise_host_limits()
            host_limits.mount_ptys(self.dir / "pts")
        except Exception:
            self.destroy()
            raise

    def binds(self) -> dict[str, dict[str, str]]:
        binds = {str(self.mnt / name): {"bind": inside, "mode": "rw"} for name, (inside, _, _) in WRITABLE.items()}
        if self.uid:
            binds.update({str(self.dir / name): {"bind": f"/etc/{name}", "mode": "ro"} for name in ("passwd", "group")})
        binds[str(self.dir / "pts")] = {"bind": "/dev/pts", "mode": "rw"}  # its own terminals (host_limits.py)
        return binds

    def destroy(self) -> None:
        """Unmount and delete (idempotent): the host's space is back."""
        destroy_dir(self.dir)


def destroy_dir(path: Path) -> None:
    _unmount(path / "m")
    _unmount(path / "pts")
    shutil.rmtree(path, ignore_errors=True)


def reap_volumes(owner_alive) -> list[str]:
    """Remove volumes whose owner (``<pid>-<start>`` prefix of the folder name) is dead; returns their paths.

    ``owner_alive(pid, start) -> bool`` decides; folders of live owners are never touched.
    """
    removed = []
    if not VOLUME_DIR.is_dir():
        return removed
    for path in VOLUME_DIR.iterdir():
        parts = path.name.split("-")
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        if owner_alive(int(parts[0]), parts[1]):
            continue
        destroy_dir(path)
        removed.append(str(path))
    return removed
