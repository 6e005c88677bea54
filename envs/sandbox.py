"""One Docker container per episode, driven through the Engine API from one long-lived client.

Why a runner: every ``docker exec`` costs a runc exec (about 50 ms on the loaded 2-core development machine,
60 ms through the CLI). The sandbox makes one exec per container, of ``envs/runner.py`` with an attached
socket, and sends each command to it as a JSON line: a command then costs a fork/exec inside the container.
If the runner dies (the agent killed it, OOM) that command reports it and the next one restarts it.

Guarantees (the Sandbox contract in DESIGN.md):
- no network (``network_mode=none``), memory (no swap), CPU and process-count limits; ``docker-init`` as PID 1
  reaps orphans;
- the agent's commands run as the non-root user ``agent``; ``exec(..., user="root")`` is for the harness.
  With loop volumes, ``agent`` is a host uid no other live sandbox has (``agent_uid``, leased by
  :mod:`lightswe.envs.uids`: per-user kernel counters are not shared between episodes), the sandbox has a
  ``devpts`` instance of its own (:mod:`lightswe.envs.host_limits`), and with
  ``LIGHTSWE_DISK_ADMISSION=reserve`` no volume is made that the host's disk could not hold
  (:func:`lightswe.envs.disk.admitted`). The
  container runs with ``no-new-privileges`` and only the capabilities the harness's root runner needs (switch
  user, kill, own files), so a setuid binary cannot give the agent root; instance images have none
  (``tasks/images.py``). The runner is started with ``python3 -I -S`` and ``HOME=/root``: no file the agent
  can write (user site, ``PYTHON*`` variables, the working directory) is read by the root process; no command
  can change its CPU affinity (``sched_setaffinity`` fails with EPERM: a seccomp filter the runner installs,
  :func:`lightswe.envs.runner.lock_affinity`, except in image builds), so graded code cannot choose the CPU it
  waits on (:mod:`lightswe.envs.starvation`);
- a disk write limit (``disk_limit``, default 4 GiB; see :mod:`lightswe.envs.disk` for which mechanism
  applies): a command that fills it is stopped and its output says so; every command also gets
  ``RLIMIT_FSIZE`` = the limit;
- ``exec`` runs ``cmd`` under ``bash -c`` in a new session: on timeout the whole process group (and every
  leftover process of the agent user) gets SIGKILL, ``timed_out=True``, and the container stays usable;
  output is stdout and stderr merged, capped at ``max_output_bytes`` (the cap is said in the text; output past
  the cap is not read, so a command that keeps printing gets SIGPIPE and ``yes`` cannot flood the host) and
  decoded as UTF-8 with replacement; what the command leaves running in its process group is killed when it
  ends (a fork bomb cannot outlive its command; ``setsid cmd &`` keeps a server running);
- files are read and written through the container file system (``get_archive``/``put_archive``), never a
  host path;
- containers are named ``lightswe-<pid>-<random>`` and carry labels (``lightswe.sandbox=1``, their own name,
  owner pid and start time, host boot id, hostname, creation time, volume folder) so that
  :func:`reap_orphans` removes exactly the containers this code started whose owner process on this host is
  gone: a container another tool starts from a lightswe image (which may carry stale labels) has another name
  and is never touched;
- the base commit comes from the image's ``lightswe.base_commit`` label (instance images), not from running
  git in the container; :meth:`Sandbox.reset` replaces the container with a fresh one from the image
  (pristine by construction); for a fast reset take containers from a warm
  :class:`lightswe.envs.pool.SandboxPool`.

Example::

    with Sandbox(SandboxConfig(image="lightswe/base:bookworm", workdir="/")) as box:
        result = box.exec("echo hi && exit 3", timeout=5)
        assert (result.exit_code, result.output) == (3, "hi\\n")
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import io
import json
import os
import socket
import struct
import tarfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from lightswe.envs import disk as _disk
from lightswe.envs import runner as _runner_module
from lightswe.envs import uids as _uids
from lightswe.envs.engine import AGENT_UID, BASE_IMAGE, ensure_engine
from lightswe.errors import InfrastructureError, LightSWEError, UserInputError

LABEL = "lightswe.sandbox"
NAME_LABEL = "lightswe.name"  # the container's own name: only containers Sandbox._start made match it
BASE_COMMIT_LABEL = "lightswe.base_commit"  # set on instance images by tasks/images.py
# labels Sandbox._start sets on its containers; images committed from a sandbox clear them (tasks/images.py)
RUNTIME_LABELS = (LABEL, NAME_LABEL, "lightswe.owner_pid", "lightswe.owner_start", "lightswe.boot_id",
                  "lightswe.hostname", "lightswe.created", "lightswe.volume", _uids.UID_LABEL)
# what the harness's root runner needs: switch to the agent user, kill its processes, write/chown its files
_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL"]
_RUNNER_SOURCE = open(_runner_module.__file__, encoding="utf-8").read()  # noqa: SIM115 - runs in-container


class SandboxError(InfrastructureError):
    """The sandbox could not do what was asked (container gone, engine error); says what and the fix."""


@dataclass(kw_only=True, slots=True)
class SandboxConfig:
    image: str = BASE_IMAGE
    workdir: str = "/testbed"
    user: str = "agent"  # who runs exec() by default; "root" only for harness steps
    mem_limit: str = "2g"  # also the swap limit: no swap
    cpus: float = 1.0
    pids_limit: int = 256
    network: str = "none"  # "host" only while building images, never for the agent
    read_only_binds: dict[str, str] = field(default_factory=dict)  # host path -> container path (image builds)
    max_output_bytes: int = 16_384
    default_timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    disk_limit: str | None = "4g"  # bytes the sandbox may write (Docker size: "4g", "512m"); None: no limit
    build: bool = False  # image builds only: writable root file system, Docker's default capabilities, no limit


@dataclass(kw_only=True, slots=True)
class ExecResult:
    exit_code: int
    output: str
    timed_out: bool
    truncated: bool
    duration_s: float
    disk_full: bool = False  # the command was stopped because the sandbox's disk limit was reached
    runner_died: bool = False  # the in-container runner died mid-command (container stopped or killed, OOM)


_BASE_ENV = {
    "HOME": "/home/agent", "LANG": "C.UTF-8", "TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat",
    "PYTHONDONTWRITEBYTECODE": "1", "PIP_PROGRESS_BAR": "off", "PYTHONUNBUFFERED": "1",
}


def _start_time(pid: int) -> str:
    """Start time of a process in clock ticks since boot (tells a live owner from a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


_CLIENT = None


def default_client():
    """One long-lived client per process (each new client costs a socket handshake and API version check)."""
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = ensure_engine()
        _CLIENT.api.timeout = 24 * 3600  # exec_start blocks for the command; timeouts are enforced in-container
        try:  # leftovers of processes killed before they could close() their sandboxes
            reap_orphans(_CLIENT)
        except Exception:  # noqa: BLE001 - reaping is best effort; never block starting a sandbox
            pass
    return _CLIENT


# Every open sandbox of this process, so that an interrupt can close them from the main thread (weak: a
# sandbox nobody holds is closed by __del__). A thread that runs under ``stop_scope(event)`` gives its sandboxes
# that event: once it is set, they refuse new containers and commands (SandboxError) and ``close_sandboxes``
# closes them, waking commands blocked on their sockets.
_OPEN: weakref.WeakSet = weakref.WeakSet()
_OPEN_LOCK = threading.Lock()
_SCOPE = threading.local()


@contextlib.contextmanager
def stop_scope(stop: threading.Event):
    """Sandboxes created in this thread inside the block belong to ``stop`` (see :func:`close_sandboxes`)."""
    previous = getattr(_SCOPE, "stop", None)
    _SCOPE.stop = stop
    try:
        yield stop
    finally:
        _SCOPE.stop = previous


def close_sandboxes(stop: threading.Event | None = None) -> int:
    """Close the open sandboxes of this process that belong to ``stop`` (all of them when None), from any
    thread: their containers are removed and commands blocked in other threads return at once with
    :class:`SandboxError`. Returns how many were closed."""
    with _OPEN_LOCK:
        boxes = [box for box in _OPEN if stop is None or box.stop is stop]
    _in_parallel([box.close for box in boxes])
    return len(boxes)


def _in_parallel(calls: list) -> None:
    """Run ``calls`` on daemon threads at once and wait for all (container removals take ~0.1-1 s each)."""
    threads = [threading.Thread(target=call, daemon=True, name="sandbox-close") for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


atexit.register(close_sandboxes)  # an interrupted command's daemon threads may still hold sandboxes


class Sandbox:
    """A running container; see the module docstring for what it guarantees."""

    def __init__(self, config: SandboxConfig | None = None, *, client=None) -> None:
        self.config = config or SandboxConfig()
        self.client = client or default_client()
        self.api = self.client.api
        self.container_id: str | None = None
        self.base_commit: str | None = None  # the repository's commit in the image (``lightswe.base_commit``)
        self._runner = None
        self._volume: _disk.LoopVolume | None = None
        self._uid: _uids.UidLease | None = None
        self.agent_uid = AGENT_UID  # the agent user's uid in this container (a leased one with loop volumes)
        self._disk_path = ""  # where the runner watches free space ("" when no hard limit applies)
        # the runner's commands cannot change their CPU affinity (runner.lock_affinity); known from the first command
        self.affinity_locked = False
        self.started_at = time.time()  # epoch seconds, this host's clock: before the container was created
        self._lock = threading.Lock()
        self.stop: threading.Event | None = getattr(_SCOPE, "stop", None)  # set: stopped (see stop_scope)
        self._start()

    # ------------------------------------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        c = self.config
        self._check_stop()
        owner = f"{os.getpid()}-{_start_time(os.getpid())}"
        name = f"lightswe-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        size = _disk.parse_size(c.disk_limit) if c.disk_limit else 0
        binds = {host: {"bind": inside, "mode": "ro"} for host, inside in c.read_only_binds.items()}
        extra: dict = {}
        try:  # both ask the engine: an unreachable one is the infrastructure branch, like create/start below
            mode = _disk.disk_mode(self.client) if c.disk_limit and not c.build else "none"
            if mode == "loop":
                self._uid = _uids.UidLease(self._uid_in_use)
                self.agent_uid = self._uid.uid
                self._volume = _disk.LoopVolume(self.client, c.image, size, owner, uid=self.agent_uid)
        except (_disk.DiskError, _uids.UidError) as err:
            self._drop_volume()
            raise SandboxError(f"cannot make the disk volume of a sandbox from {c.image!r}: {err}; fix: check "
                               "free space under ~/.cache/lightswe, or set LIGHTSWE_DISK_MODE=none to run "
                               "without a hard disk limit") from err
        except LightSWEError:
            self._drop_volume()
            raise
        except Exception as err:
            self._drop_volume()
            raise SandboxError(f"cannot prepare a sandbox of {c.image!r}: {err}; fix: check the engine "
                               "(`docker info`) and that the image exists, then retry") from err
        if mode == "loop":
            binds.update(self._volume.binds())
            extra["read_only"] = True
            self._disk_path = "/tmp"
        elif mode == "storage-opt":
            extra["storage_opt"] = {"size": str(size)}
            self._disk_path = "/"
        if not c.build:
            extra.update(security_opt=["no-new-privileges"], cap_drop=["ALL"], cap_add=list(_CAPABILITIES))
        labels = {**c.labels, LABEL: "1", NAME_LABEL: name, "lightswe.owner_pid": str(os.getpid()),
                  "lightswe.owner_start": _start_time(os.getpid()), "lightswe.boot_id": _boot_id(),
                  "lightswe.hostname": socket.gethostname(), "lightswe.created": f"{time.time():.3f}",
                  "lightswe.volume": str(self._volume.dir) if self._volume else "",
                  _uids.UID_LABEL: str(self.agent_uid)}
        try:
            host_config = self.api.create_host_config(
                network_mode=c.network, mem_limit=c.mem_limit, memswap_limit=c.mem_limit,
                nano_cpus=int(c.cpus * 1e9), pids_limit=c.pids_limit, init=True, binds=binds, **extra)
            created = self.api.create_container(
                c.image, command=["sleep", "infinity"], labels=labels, host_config=host_config, name=name,
                working_dir=c.workdir, environment={**_BASE_ENV, **c.env}, network_disabled=c.network == "none",
            )
        except Exception as err:
            self._drop_volume()
            if "storage_opt" in extra and "storage-opt" in str(err).lower():  # no quota after all: the fallback
                _disk.disk_mode(self.client, no_quota=True)
                return self._start()
            raise SandboxError(f"cannot create a container from {c.image!r}: {err}; fix: build it first "
                               "(`python -m lightswe setup` for the base image)") from err
        self.container_id = created["Id"]
        with _OPEN_LOCK:
            _OPEN.add(self)
        if self.stop is not None and self.stop.is_set():  # stopped while the container was being created
            self.close()
            self._check_stop()
        try:
            self.api.start(self.container_id)
        except Exception as err:
            self.close()
            raise SandboxError(f"cannot start a container from {c.image!r}: {err}; fix: check the engine "
                               "(`docker info`) and the image's resource settings, then retry") from err
        self.base_commit = _image_label(self.client, c.image, BASE_COMMIT_LABEL)
        if self.base_commit is None and c.workdir not in ("/", ""):
            # images without the label (not instance images): asked before any agent step, as the agent user
            head = self.exec("git rev-parse HEAD 2>/dev/null", timeout=10, user="agent")
            self.base_commit = head.output.strip() if head.exit_code == 0 and head.output.strip() else None

    def _drop_volume(self) -> None:
        """Delete the disk volume, then give the uid back (after the container using it is gone)."""
        if self._volume is not None:
            volume, self._volume = self._volume, None
            volume.destroy()
        if self._uid is not None:
            lease, self._uid = self._uid, None
            lease.release()
            self.agent_uid = AGENT_UID

    def _uid_in_use(self, uid: int) -> bool:
        """Whether a container carrying ``uid`` exists on the engine (e.g. one of a killed process, not reaped
        yet, whose processes still run as that uid)."""
        return bool(self.client.api.containers(all=True, filters={"label": f"{_uids.UID_LABEL}={uid}"}))

    def close(self) -> None:
        """Remove the container and its disk volume (idempotent); the host's disk space is back. Safe from
        another thread: a command blocked on the runner's socket returns at once with :class:`SandboxError`."""
        container_id, self.container_id = self.container_id, None
        self._stop_runner(owner=False)
        if container_id is not None:
            try:
                self.api.remove_container(container_id, force=True)
            except Exception:  # noqa: BLE001 - already gone is fine; the reaper catches the rest
                pass
        self._drop_volume()
        with _OPEN_LOCK:
            _OPEN.discard(self)

    def out_of_memory(self, since: float | None = None, wait_s: float = 2.0) -> bool:
        """True when the container reached its own memory limit since ``since`` (epoch seconds, this host's clock;
        default: since it was created, :attr:`started_at`):
        the engine reported an ``oom`` event for it (its cgroup's OOM killer ran), or it stopped with
        ``OOMKilled``. The limit is the sandbox's contract and only the commands' processes fill it (the root
        runner is ~12 MB), so this is what the commands did, never the machine: the OOM killer picks the largest
        process of the lowest ``oom_score_adj``, and commands may lower theirs to the runner's 0 and hold memory
        no process's RSS shows (socket buffers), so it takes the runner, the runner's restart, or the container's
        init. A host-wide OOM raises no such event. Waits up to ``wait_s`` for the event to arrive; False when the
        engine cannot say (the caller's machine-failure branch)."""
        cid = self.container_id
        if cid is None:
            return False
        since = self.started_at if since is None else since
        until = time.time() + wait_s
        try:
            if self.api.inspect_container(cid)["State"].get("OOMKilled"):
                return True
        except Exception:  # noqa: BLE001, S110 - gone: the events may still say
            pass
        try:
            events = self.api.events(since=int(since) - 1, until=int(until) + 1, decode=True,
                                     filters={"container": cid, "event": "oom"})
            return any(event.get("timeNano", 0) >= (int(since) - 1) * 1_000_000_000 for event in events)
        except Exception:  # noqa: BLE001 - the engine cannot say
            return False

    def claim(self) -> Sandbox:
        """The calling thread takes over this sandbox (e.g. from a pool's starter thread): its ``stop_scope``
        applies from now on. Returns the sandbox."""
        self.stop = getattr(_SCOPE, "stop", None)
        return self

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise SandboxError("the sandbox was stopped (the run was interrupted or shut down)")

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; close() is the contract
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def _require(self) -> str:
        if self.container_id is None:
            raise SandboxError("the sandbox is closed; create a new Sandbox (or call env.reset())")
        return self.container_id

    def reset(self) -> float:
        """Replace the container with a fresh one from the image (nothing of the old one survives); seconds.

        This is a cold start; :class:`lightswe.envs.pool.SandboxPool` hands out pre-started containers instead.
        """
        start = time.perf_counter()
        self.close()
        self._start()
        return time.perf_counter() - start

    # ------------------------------------------------------------------------------------------- commands
    def _start_runner(self) -> None:
        """Start the in-container runner (envs/runner.py) on an attached exec socket."""
        cid = self._require()
        # -I -S: no user site, no PYTHON* variables, no working-directory imports; HOME is root's: the root
        # runner reads nothing the agent can write
        lock = [] if self.config.build else ["--lock-affinity"]  # runner.lock_affinity: no command pins its CPU
        exec_id = self.api.exec_create(cid, ["python3", "-I", "-S", "-u", "-c", _RUNNER_SOURCE, *lock], stdin=True,
                                       stdout=True, stderr=True, user="root", workdir="/",
                                       environment={"HOME": "/root"})["Id"]
        response = self.api.exec_start(exec_id, socket=True)
        sock = getattr(response, "_sock", response)
        sock.settimeout(60)
        self._runner = (sock, bytearray(), response)
        ready = self._read_line()
        if not ready.startswith(b'{"ready"'):
            raise SandboxError(f"the command runner did not start in {cid[:12]}: {ready[:300]!r}; is python3 in "
                               f"the image {self.config.image!r}?")
        self.affinity_locked = b'"affinity_locked": true' in ready

    def _read_line(self, runner: tuple | None = None) -> bytes:
        """Next stdout line from the runner, unpacking the engine's 8-byte stream frames."""
        runner = runner or self._runner
        if runner is None:  # closed from another thread
            raise SandboxError("the sandbox was closed")
        sock, buffer, _ = runner
        while True:
            newline = buffer.find(b"\n")
            if newline >= 0:
                line = bytes(buffer[:newline])
                del buffer[: newline + 1]
                return line
            header = self._recv_exactly(sock, 8)
            stream, size = struct.unpack(">BxxxL", header)
            payload = self._recv_exactly(sock, size)
            if stream == 1:
                buffer.extend(payload)
            # stream 2 (the runner's own stderr) only carries Python tracebacks: ignored unless it dies

    @staticmethod
    def _recv_exactly(sock, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise SandboxError("the command runner in the sandbox exited (container stopped or killed)")
            data.extend(chunk)
        return bytes(data)

    def _stop_runner(self, *, owner: bool = True) -> None:
        """Stop talking to the runner. ``owner=False`` (from another thread, e.g. ``close`` on an interrupt):
        only shut the socket down, which wakes a command blocked on it; the thread running that command closes
        it (closing an fd another thread polls can leave that thread waiting out its timeout)."""
        if self._runner is not None:
            sock, _, response = self._runner
            self._runner = None
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
            if not owner and not self._lock.acquire(blocking=False):
                return  # a command is running: its thread closes the socket when its read fails
            try:
                self._close_quietly(sock, response)
            finally:
                if not owner:
                    self._lock.release()

    @staticmethod
    def _close_quietly(*things) -> None:
        for thing in things:
            try:
                thing.close()
            except Exception:  # noqa: BLE001
                pass

    def exec(self, cmd: str, timeout: float | None = None, *, user: str | None = None,
             workdir: str | None = None, max_output_bytes: int | None = None,
             env: dict[str, str] | None = None, stdin: bytes | None = None,
             kill_first: str | None = None) -> ExecResult:
        """Run ``cmd`` with bash; see the module docstring for timeout and output-cap behaviour.

        ``kill_first`` names a (non-root) user whose processes are all killed before ``cmd`` starts.
        """
        self._check_stop()
        self._require()
        timeout = self.config.default_timeout if timeout is None else float(timeout)
        if not 0 < timeout < float("inf"):  # NaN too: it would reach the socket and fake a runner death
            raise UserInputError(f"timeout must be a finite number of seconds > 0, got {timeout}")
        cap = self.config.max_output_bytes if max_output_bytes is None else max_output_bytes
        request = {"cmd": cmd, "timeout": timeout, "user": user or self.config.user,
                   "cwd": workdir or self.config.workdir, "cap": cap, "env": env or {},
                   "stdin": base64.b64encode(stdin).decode() if stdin else "", "kill_first": kill_first or "",
                   "disk_path": self._disk_path, "fsize": self._fsize()}
        start = time.perf_counter()
        with self._lock:
            if self._runner is None:
                try:
                    self._start_runner()
                except SandboxError:
                    raise
                except Exception as err:  # the container is gone or stopped
                    raise SandboxError(f"cannot run commands in container {str(self.container_id)[:12]}: {err}") from err
            runner = self._runner
            try:
                if runner is None:
                    raise SandboxError("the sandbox was closed")
                runner[0].settimeout(timeout + 30)
                runner[0].sendall(json.dumps(request).encode() + b"\n")
                reply = json.loads(self._read_line(runner))
            except (OSError, SandboxError, ValueError) as err:
                if self.container_id is None:  # closed from another thread (interrupt): not the command's doing
                    if runner is not None:
                        self._close_quietly(runner[0], runner[2])
                    raise SandboxError("the sandbox was closed while the command ran") from err
                # The command killed the runner (or the OOM killer did): report it, restart on the next call.
                self._stop_runner()
                return ExecResult(exit_code=137, output=f"[the sandbox's command runner died while running this "
                                  f"command ({err}); it restarts with the next command]", timed_out=False,
                                  truncated=False, duration_s=time.perf_counter() - start, runner_died=True)
        duration = time.perf_counter() - start
        raw = base64.b64decode(reply["out"])
        truncated, timed_out = bool(reply["truncated"]), bool(reply["timed_out"])
        output = raw[:cap].decode("utf-8", errors="replace")
        if truncated:
            output += (f"\n[output truncated: the command printed more than {cap} bytes and only the first {cap} "
                       "are shown; output past the cap stopped the command (SIGPIPE). Redirect to a file and view "
                       "parts of it, or filter with grep/head/tail.]")
        if timed_out:
            output += (f"\n[command timed out after {timeout:g} s and its whole process group was killed; "
                       "run long jobs with a smaller input or in the background with output to a file.]")
        disk_full = bool(reply.get("disk_full"))
        if disk_full:
            output += (f"\n[the sandbox's disk limit of {self.config.disk_limit} is reached (a command still "
                       "writing is stopped); delete files you made (build outputs, files in /tmp) to free space]")
        elif reply["exit"] == 128 + 25:  # SIGXFSZ
            output += (f"\n[a file reached the sandbox's disk limit of {self.config.disk_limit} (SIGXFSZ) and the "
                       "command was stopped; write smaller files]")
        elif reply["exit"] == 137 and not timed_out:
            output += (f"\n[the command was killed by SIGKILL, most likely for exceeding the sandbox's memory "
                       f"limit of {self.config.mem_limit}]")
        return ExecResult(exit_code=int(reply["exit"]), output=output, timed_out=timed_out, truncated=truncated,
                          duration_s=duration, disk_full=disk_full)

    def _fsize(self) -> int:
        """RLIMIT_FSIZE for commands, bytes (0: unlimited)."""
        if not self.config.disk_limit or self.config.build:
            return 0
        return _disk.parse_size(self.config.disk_limit)

    # ---------------------------------------------------------------------------------------------- files
    def _abs(self, path: str) -> PurePosixPath:
        p = PurePosixPath(path)
        return p if p.is_absolute() else PurePosixPath(self.config.workdir) / p

    def read_file(self, path: str, max_bytes: int = 4 * 1024 * 1024) -> bytes:
        """Bytes of a regular file in the container (symlinks followed); FileNotFoundError if absent."""
        cid = self._require()
        target = self._abs(path)
        for _ in range(8):  # follow at most 8 symlinks
            try:
                stream, stat = self.api.get_archive(cid, str(target))
            except Exception as err:  # noqa: BLE001 - only NotFound means the file is absent
                if getattr(getattr(err, "response", None), "status_code", None) == 404:
                    raise FileNotFoundError(f"{target}: no such file in the sandbox") from err
                raise SandboxError(f"reading {target} from container {cid[:12]} failed: {err}; fix: check that "
                                   "the container still runs (`docker ps`) and the engine answers") from err
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                member = archive.next()
                if member is None:
                    raise FileNotFoundError(f"{target}: empty archive")
                if member.issym():
                    link = PurePosixPath(member.linkname)
                    target = link if link.is_absolute() else target.parent / link
                    continue
                if member.isdir():
                    raise IsADirectoryError(f"{target} is a directory")
                if member.size > max_bytes:
                    raise UserInputError(f"{target} is {member.size} bytes, more than the {max_bytes} allowed")
                handle = archive.extractfile(member)
                return handle.read() if handle else b""
        raise FileNotFoundError(f"{path}: too many levels of symbolic links")

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644, owner: str | None = None) -> None:
        """Create or replace a file (parents created) owned by the agent unless ``owner="root"``."""
        cid = self._require()
        target = self._abs(path)
        payload = data.encode() if isinstance(data, str) else data
        uid = 0 if (owner or self.config.user) == "root" else self.agent_uid
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            info = tarfile.TarInfo(target.name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(payload), mode, uid, uid, int(time.time())
            archive.addfile(info, io.BytesIO(payload))
        parent = str(target.parent)
        try:
            ok = self.api.put_archive(cid, parent, buffer.getvalue())
        except Exception:  # noqa: BLE001 - most likely the parent directory is missing
            ok = False
        if not ok:
            made = self.exec(f"mkdir -p -- '{parent}'", timeout=10, user=owner or self.config.user)
            if made.exit_code != 0:
                raise PermissionError(f"cannot create directory {parent}: {made.output.strip()}")
            try:
                ok = self.api.put_archive(cid, parent, buffer.getvalue())
            except Exception as err:  # noqa: BLE001 - docker/requests errors: the infrastructure branch
                raise SandboxError(f"writing {target} into container {cid[:12]} failed: {err}") from err
            if not ok:
                raise SandboxError(f"writing {target} into the sandbox failed")


def reap_orphans(client=None) -> list[str]:
    """Remove the sandboxes lightswe started whose owner process on this host is dead; returns their ids.

    Only containers whose ``lightswe.name`` label equals their own name are considered: ``Sandbox._start``
    names each container and records that name, so a container another tool starts from an image committed
    from a sandbox (labels are inherited) never matches. Containers of other hosts (another boot id or
    hostname) or of live processes are never touched, so concurrent users of one engine are safe. Disk volumes
    (:mod:`lightswe.envs.disk`) of dead owners are unmounted and deleted too.
    """
    client = client or default_client()
    boot, host = _boot_id(), socket.gethostname()
    removed = []
    for info in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        labels = info.get("Labels") or {}
        names = [n.lstrip("/") for n in info.get("Names") or []]
        if not labels.get(NAME_LABEL) or labels.get(NAME_LABEL) not in names:
            continue  # not started by Sandbox._start (e.g. `docker run` of a committed lightswe image)
        if labels.get("lightswe.boot_id") != boot or labels.get("lightswe.hostname") != host:
            continue
        try:
            pid = int(labels.get("lightswe.owner_pid", ""))
        except ValueError:
            continue
        if _owner_alive(pid, labels.get("lightswe.owner_start", "")):
            continue
        try:
            client.api.remove_container(info["Id"], force=True)
            removed.append(info["Id"])
        except Exception:  # noqa: BLE001 - raced with another reaper
            pass
    try:
        _disk.reap_volumes(_owner_alive)
    except Exception:  # noqa: BLE001 - volumes are best effort here; a later reaper retries
        pass
    return removed


def _owner_alive(pid: int, start: str) -> bool:
    return _alive(pid) and (not start or _start_time(pid) == start)


_IMAGE_LABELS: dict[tuple[str, str], str | None] = {}


def _image_label(client, image: str, label: str) -> str | None:
    """A label of ``image`` (cached per image id; one inspect per image and process)."""
    try:
        info = client.api.inspect_image(image)
    except Exception:  # noqa: BLE001 - the container started, so the image exists; be lenient
        return None
    key = (info["Id"], label)
    if key not in _IMAGE_LABELS:
        _IMAGE_LABELS[key] = ((info.get("Config") or {}).get("Labels") or {}).get(label) or None
    return _IMAGE_LABELS[key]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
