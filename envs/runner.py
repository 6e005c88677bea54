"""The in-container command runner: one long-lived process per sandbox, fed JSON lines on stdin.

Why: each ``docker exec`` costs a runc exec (about 50 ms on a loaded 2-core machine); a runner started once
per container turns every later command into a fork/exec inside the container (a few ms).

This file runs *inside* the container under the image's python3 (standard library only, started with
``-I -S``); the host side is :class:`lightswe.envs.sandbox.Sandbox`. Request: ``{"cmd", "timeout", "user",
"cwd", "cap", "env", "stdin" (base64), "kill_first" (a user), "disk_path", "fsize"}``; response: one line
``{"exit", "out" (base64), "truncated", "timed_out", "disk_full"}`` on stdout. ``fsize`` (bytes, 0: none) is
the command's ``RLIMIT_FSIZE``; when ``disk_path`` is set, the file system holding it is watched while the
command runs and the command is stopped (like a timeout) once it has less than 1 MiB or 64 inodes left. Each command runs as ``bash -c`` in a
new session (its own process group) as the requested user; on timeout the group gets SIGKILL and so do all
leftover processes of a non-root user. Output (stdout and stderr merged) past ``cap`` bytes is not read: the
pipe is closed, so a command that keeps printing gets SIGPIPE. Once the command's shell exits, output still
buffered is drained briefly and the rest of its process group is killed: a process meant to outlive the command
must leave the group (``setsid cmd > log 2>&1 &``).
"""

import base64
import json
import os
import pwd
import resource
import select
import signal
import subprocess
import sys
import time


def _raise_oom_score(pid: int) -> None:
    try:  # the agent's processes, not the runner, are what the OOM killer should pick (children inherit it)
        with open(f"/proc/{pid}/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass


def _kill_user(uid: int) -> None:
    """SIGKILL every process of ``uid`` (never root's): kill(-1) from a child that became that user; when no pid
    is free for that child (the user's processes hold them all: the container's pid limit), each process of
    ``uid`` is signalled from here (an exception there ended the command with "runner error" and lost its output,
    which a log-graded row needs: no reward instead of 0.0)."""
    if uid == 0:
        return
    try:
        pid = os.fork()
    except OSError:
        _kill_each(uid)
        return
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)  # every process this uid may signal, except the caller
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def _kill_each(uid: int) -> None:
    """SIGKILL each process whose real or effective uid is ``uid`` (read from ``/proc/<pid>/status``, which every
    process shows), in rounds until none is left (one may fork while the others die)."""
    for _ in range(100):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/status", "rb") as handle:
                    fields = dict(line.split(b":", 1) for line in handle if b":" in line)
                zombie = fields.get(b"State", b"").split()[:1] == [b"Z"]  # dead already, its parent reaps it
                if not zombie and str(uid).encode() in fields.get(b"Uid", b"").split()[:2]:
                    os.kill(int(name), signal.SIGKILL)
                    found = True
            except (OSError, ValueError):
                continue
        if not found:
            return
        time.sleep(0.01)


# sched_setaffinity per audit arch (linux/audit.h; the syscall tables of each): x86_64 (x32 sets bit 30 of the
# number), i386, aarch64, arm
_AFFINITY_SYSCALLS = ((0xC000003E, 203, 0xBFFFFFFF), (0x40000003, 241, 0xFFFFFFFF), (0xC00000B7, 122, 0xFFFFFFFF),
                      (0x40000028, 241, 0xFFFFFFFF))


def lock_affinity() -> bool:
    """Make ``sched_setaffinity`` fail with EPERM for the runner and every command it starts (a seccomp filter,
    inherited and never removable; ``seccomp(2)``, ``Documentation/userspace-api/seccomp_filter.rst``); True when
    installed. Why: the graded code chose the CPU it waits on (pinned beside a neighbour's busy loop while
    another CPU was free) and its hang read as the host starving it (``lightswe.envs.starvation``): no reward
    instead of 0.0. Reading the affinity (``sched_getaffinity``, ``nproc``) still works. True only when a
    ``sched_setaffinity`` of this process then fails with EPERM (an arch missing from ``_AFFINITY_SYSCALLS``
    gets a filter that blocks nothing: False, and grading judges no starvation there)."""
    try:
        import ctypes
    except ImportError:
        return False
    ld_arch, ld_nr = (0x20, 0, 0, 4), (0x20, 0, 0, 0)  # BPF_LD|BPF_W|BPF_ABS of seccomp_data.arch / .nr
    prog = []
    for arch, nr, mask in _AFFINITY_SYSCALLS:  # each block: [ld arch, jeq arch, ld nr, and mask, jeq nr]
        prog += [ld_arch, (0x15, 0, 3, arch), ld_nr, (0x54, 0, 0, mask), (0x15, 0, 0, nr)]
    allow, deny = len(prog), len(prog) + 1
    for i in range(4, len(prog), 5):  # the nr test: deny on a match, else allow
        prog[i] = (0x15, deny - i - 1, allow - i - 1, prog[i][3])
    for i in range(1, len(prog), 5):  # another arch: the next block (or allow after the last)
        prog[i] = (0x15, 0, min(i + 4, allow) - i - 1, prog[i][3])
    prog += [(0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | 1)]  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO|EPERM

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(prog))(*[Filter(*ins) for ins in prog])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(38, 1, None, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS (the container has it already)
        return False
    program = Program(len(prog), filters)
    if libc.prctl(22, 2, ctypes.cast(ctypes.byref(program), ctypes.c_void_p), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        return False
    try:  # proven, not assumed: on an arch missing above (riscv64, ppc64le, s390x...) the filter blocks nothing
        os.sched_setaffinity(0, os.sched_getaffinity(0))
    except PermissionError:
        return True
    except OSError:
        return False
    return False


_LOW_BYTES, _LOW_INODES = 1 << 20, 64


def _disk_full(path: str) -> bool:
    if not path:
        return False
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _LOW_BYTES or (st.f_files > 0 and st.f_favail < _LOW_INODES)


def _limit_file_size(fsize: int) -> None:
    """RLIMIT_FSIZE of the runner itself, inherited by every command (no preexec_fn: keeps vfork fast)."""
    if fsize > 0 and resource.getrlimit(resource.RLIMIT_FSIZE)[1] != fsize:
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        except (ValueError, OSError):
            pass


def run(req: dict) -> dict:
    entry = pwd.getpwnam(req.get("user") or "root")
    env = {**os.environ, "HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name, **req.get("env", {})}
    cap, timeout = int(req["cap"]), float(req["timeout"])
    _limit_file_size(int(req.get("fsize") or 0))
    if req.get("kill_first"):  # e.g. a reset: the agent's leftover processes die before the command runs
        _kill_user(pwd.getpwnam(req["kill_first"]).pw_uid)
    try:
        proc = subprocess.Popen(
            ["bash", "-c", req["cmd"]], stdin=subprocess.PIPE if req.get("stdin") else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=req.get("cwd") or entry.pw_dir, env=env, start_new_session=True,
            user=entry.pw_uid, group=entry.pw_gid, extra_groups=[] if entry.pw_uid else None,
        )
    except OSError as err:  # e.g. EAGAIN when the pid limit is reached
        return {"exit": 126, "out": base64.b64encode(f"cannot start the command: {err}".encode()).decode(),
                "truncated": False, "timed_out": False}
    _raise_oom_score(proc.pid)
    if req.get("stdin"):  # small payloads (file contents for the edit tools): written before output is read
        try:
            proc.stdin.write(base64.b64decode(req["stdin"]))
        except BrokenPipeError:
            pass
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    chunks, size, truncated, timed_out, exited_at = [], 0, False, False, None
    disk_path, disk_full, next_check = req.get("disk_path") or "", False, 0.0
    watch = bool(disk_path) and not _disk_full(disk_path)  # when full already, let `rm` free space
    while True:
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        if watch and now >= next_check:
            next_check = now + 0.2
            if _disk_full(disk_path):
                disk_full = True
                break
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        wait = min(deadline - now, 0.05 if exited_at is not None else 0.2 if watch else 1.0)
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            if exited_at is not None:
                break  # shell is gone and nothing more arrived: background processes may hold the pipe
            continue
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
        size += len(data)
        if size > cap:
            truncated = True
            break
    proc.stdout.close()  # past the cap: the writer gets SIGPIPE on its next write
    if timed_out or disk_full:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _kill_user(entry.pw_uid)
    try:
        code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _kill_user(entry.pw_uid)
        code = proc.wait()
    for _ in range(20):  # what the command left in its group dies with it (fork bombs, forgotten `cmd &`);
        try:  # repeated: a process forking while the group is signalled can leave a child behind
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.01)
    code = 128 - code if code < 0 else code
    disk_full = disk_full or _disk_full(disk_path)
    out = b"".join(chunks)[: cap + 1]
    return {"exit": code, "out": base64.b64encode(out).decode(), "truncated": truncated, "timed_out": timed_out,
            "disk_full": disk_full}


def main() -> None:
    out = sys.stdout.buffer
    locked = "--lock-affinity" in sys.argv[1:] and lock_affinity()  # every sandbox but an image build's
    out.write(b'{"ready": true, "affinity_locked": ' + (b"true" if locked else b"false") + b"}\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            reply = run(json.loads(line))
        except Exception as err:  # noqa: BLE001 - a bad request must not end the runner
            reply = {"exit": 127, "out": base64.b64encode(f"runner error: {err!r}".encode()).decode(),
                     "truncated": False, "timed_out": False}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
