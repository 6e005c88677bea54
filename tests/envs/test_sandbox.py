"""The Docker sandbox against the real engine: limits, timeouts, output cap, files, reset, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import container_exists

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def box():
    from lightswe.envs.engine import ensure_base_image
    from lightswe.envs.sandbox import Sandbox, SandboxConfig

    ensure_base_image()
    sandbox = Sandbox(SandboxConfig(workdir="/home/agent", mem_limit="256m", pids_limit=64, max_output_bytes=4096))
    yield sandbox
    sandbox.close()


def test_exec_exit_code_output_and_user(box):
    result = box.exec("echo out; echo err >&2; whoami; exit 3", timeout=10)
    assert (result.exit_code, result.output, result.timed_out, result.truncated) == (3, "out\nerr\nagent\n", False, False)
    assert box.exec("whoami", user="root").output == "root\n"


def test_no_network(box):
    result = box.exec("cat /sys/class/net/*/operstate 2>/dev/null | sort | tr '\\n' ' '; ls /sys/class/net", timeout=10)
    assert result.output.split()[-1] == "lo" and "eth0" not in result.output


def test_timeout_kills_the_group_and_sandbox_stays_usable(box):
    start = time.perf_counter()
    result = box.exec("sleep 1000 & sleep 1000; echo never", timeout=1)
    assert time.perf_counter() - start < 5
    assert result.timed_out and result.exit_code == 137 and "timed out after 1 s" in result.output
    assert "never" not in result.output
    after = box.exec("pgrep -c -u agent sleep || true", timeout=10)
    assert after.exit_code == 0 and after.output.strip() == "0"  # the background sleep died too


def test_output_is_capped_and_says_so(box):
    start = time.perf_counter()
    result = box.exec("yes", timeout=30)
    assert time.perf_counter() - start < 10  # past the cap the writer gets SIGPIPE, no waiting for the timeout
    assert result.truncated and not result.timed_out
    assert result.output.startswith("y\ny\n") and "more than 4096 bytes" in result.output
    assert len(result.output.encode()) < 4096 + 400


def test_non_utf8_output_is_replaced(box):
    result = box.exec("printf 'ok \\xff\\xfe\\x80 end'", timeout=10)
    assert result.output == "ok \ufffd\ufffd\ufffd end"


def test_fork_bomb_is_contained(box):
    start = time.perf_counter()
    box.exec(":(){ :|:& };:", timeout=5)
    assert time.perf_counter() - start < 15
    assert box.exec("echo alive", timeout=10).output == "alive\n"
    assert int(box.exec("ps -e --no-headers | wc -l", timeout=10).output) < 10  # nothing of the bomb is left


def test_memory_hog_is_contained(box):
    result = box.exec("python3 -c \"x = b'x' * (1024 ** 3); print(len(x))\"", timeout=30)
    assert result.exit_code == 137 and "memory limit of 256m" in result.output
    assert box.exec("echo alive", timeout=10).output == "alive\n"


def test_agent_cannot_write_outside_its_files(box):
    result = box.exec("echo x > /usr/lib/evil", timeout=10)  # read-only root file system (loop disk) or not root
    assert result.exit_code != 0 and ("Permission denied" in result.output or "Read-only" in result.output)


def test_files_round_trip_through_the_container(box):
    data = "línea 1\n\x00binary\n".encode()
    box.write_file("sub/dir/f.bin", data)
    assert box.read_file("sub/dir/f.bin") == data
    assert box.exec("stat -c %U sub/dir/f.bin", timeout=10).output == "agent\n"
    box.exec("ln -sf sub/dir/f.bin link", timeout=10)
    assert box.read_file("/home/agent/link") == data
    with pytest.raises(FileNotFoundError):
        box.read_file("missing.txt")


def test_exec_overhead_is_small(box):
    # Interleaved with plain Engine-API execs (the floor of any exec-per-command design, mini-swe-agent's
    # included) so that the comparison holds on a loaded machine; the absolute target (< 30 ms) is checked by
    # benchmarks/sandbox.py.
    api, ours, plain = box.api, [], []
    for _ in range(10):
        ours.append(box.exec("true", timeout=10).duration_s)
        start = time.perf_counter()
        exec_id = api.exec_create(box.container_id, ["true"], user="agent")["Id"]
        api.exec_start(exec_id)
        api.exec_inspect(exec_id)
        plain.append(time.perf_counter() - start)
    ours_ms, plain_ms = sorted(ours)[5] * 1000, sorted(plain)[5] * 1000
    assert ours_ms < plain_ms / 2, f"median exec of `true`: runner {ours_ms:.1f} ms, plain exec {plain_ms:.1f} ms"


def test_reset_replaces_the_container_with_a_fresh_one():
    from lightswe.envs.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(workdir="/home/agent")) as sandbox:
        sandbox.exec("echo x > /tmp/t; echo y > ~/f; (setsid sleep 100 > /dev/null 2>&1 &); sleep 0.3", timeout=30)
        old = sandbox.container_id
        sandbox.reset()
        assert sandbox.container_id != old and not container_exists(old)
        state = sandbox.exec("ls -A /tmp ~; pgrep -c -u agent sleep || true", timeout=10).output.split()
        assert state == ["/home/agent:", "/tmp:", "0"], state


def test_runner_reads_nothing_the_agent_writes():
    """The root runner ignores the agent's user site and PYTHON* variables, even when it restarts."""
    from lightswe.envs.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(workdir="/home/agent", env={"PYTHONSTARTUP": "/home/agent/evil.py"})) as sandbox:
        made = sandbox.exec("site=$(python3 -c 'import site; print(site.getusersitepackages())'); mkdir -p $site; "
                            "printf 'import os\nopen(\"/tmp/ran-as-\" + str(os.getuid()), \"w\")\n' "
                            "| tee $site/usercustomize.py > evil.py; chmod -R a+rX ~", timeout=30)
        assert made.exit_code == 0, made.output
        sandbox._stop_runner()  # the next command starts a new root runner
        assert sandbox.exec("whoami", timeout=10, user="root").output == "root\n"
        assert sandbox.exec("ls /tmp", timeout=10).output == ""


def test_close_removes_the_container():
    from lightswe.envs.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(workdir="/")) as sandbox:
        container_id = sandbox.container_id
        assert container_exists(container_id)
    assert not container_exists(container_id)
    sandbox.close()  # idempotent


_OWNER = """
import sys, time
from lightswe.envs.sandbox import Sandbox, SandboxConfig
box = Sandbox(SandboxConfig(workdir="/"))
print(box.container_id, flush=True)
time.sleep(600)
"""


def test_reaper_removes_containers_of_killed_processes_only():
    from lightswe.envs.sandbox import Sandbox, SandboxConfig, reap_orphans

    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True)
    try:
        orphan = owner.stdout.readline().strip()
        assert orphan and container_exists(orphan)
        with Sandbox(SandboxConfig(workdir="/")) as live:
            os.kill(owner.pid, signal.SIGKILL)
            owner.wait(timeout=30)
            assert container_exists(orphan)  # killed -9: nothing cleaned up by the owner
            removed = reap_orphans()
            assert orphan in removed and not container_exists(orphan)
            assert live.container_id not in removed and container_exists(live.container_id)
    finally:
        if owner.poll() is None:
            owner.kill()
