"""Finding the Docker engine as the ``docker`` CLI does, and saying "no engine at X; fix: ..." within seconds.

Real sockets throughout: a path with no engine, a TCP server that accepts and never answers (a hung engine), and
the real engine reached through a Docker context written the way ``docker context create`` writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from lightswe.envs import engine
from lightswe.envs.swe_env import default_tasks_path

NO_ENGINE = "unix:///nonexistent/docker.sock"
SAY_WITHIN_S = 5.0


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No DOCKER_* from the caller; an empty Docker config directory."""
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    return tmp_path / "docker-config"


def write_context(config_dir, name: str, host: str, current: bool = True) -> None:
    """A context as ``docker context create NAME --docker host=HOST`` stores it."""
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Metadata": {},
                                                "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}))
    if current:
        (config_dir / "config.json").write_text(json.dumps({"currentContext": name}))


def dockerd_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as handle:
                    if handle.read().strip() == "dockerd":
                        pids.add(int(entry))
            except OSError:
                continue
    return pids


def assert_says_no_engine(at: str, source: str) -> None:
    started = time.monotonic()
    dockerds = dockerd_pids()
    with pytest.raises(engine.EngineError) as caught:
        engine.ensure_engine(progress=lambda message: pytest.fail(f"tried to start an engine: {message}"))
    took = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(f"no engine at {at} ({source}"), message
    assert "fix:" in message and "\n" not in message, message
    assert took < SAY_WITHIN_S, took
    assert dockerd_pids() <= dockerds, "a dockerd was started"
    assert engine.engine_problem() == message


def test_docker_host_is_honoured_and_no_engine_is_started(clean_env, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    assert engine.engine_address() == engine.EngineAddress(url=NO_ENGINE, source="DOCKER_HOST", chosen=True)
    assert_says_no_engine(NO_ENGINE, "DOCKER_HOST")


def test_a_hung_engine_is_reported_within_seconds(clean_env, monkeypatch):
    """A TCP endpoint that accepts and never answers (a stuck engine or a firewall that swallows packets)."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("DOCKER_HOST", url)
        assert_says_no_engine(url, "DOCKER_HOST")
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_the_current_docker_context_is_honoured(clean_env):
    write_context(clean_env, "remote-box", NO_ENGINE)
    address = engine.engine_address()
    assert (address.url, address.source, address.chosen) == (NO_ENGINE, "docker context 'remote-box'", True)
    assert_says_no_engine(NO_ENGINE, "docker context 'remote-box'")


def test_docker_context_env_overrides_the_config_and_docker_host_overrides_both(clean_env, monkeypatch):
    write_context(clean_env, "in-config", "unix:///nowhere/a.sock")
    write_context(clean_env, "from-env", "unix:///nowhere/b.sock", current=False)
    monkeypatch.setenv("DOCKER_CONTEXT", "from-env")
    assert engine.engine_address().url == "unix:///nowhere/b.sock"
    monkeypatch.setenv("DOCKER_HOST", "unix:///nowhere/c.sock")
    assert engine.engine_address().url == "unix:///nowhere/c.sock"


def test_no_setting_means_the_default_socket(clean_env):
    address = engine.engine_address()
    assert (address.url, address.chosen) == (engine.DEFAULT_SOCKET, False)
    (clean_env).mkdir()
    (clean_env / "config.json").write_text(json.dumps({"currentContext": "default", "auths": {}}))
    assert engine.engine_address().url == engine.DEFAULT_SOCKET


def test_a_missing_context_is_named_with_the_fix(clean_env, monkeypatch):
    monkeypatch.setenv("DOCKER_CONTEXT", "typo")
    with pytest.raises(engine.EngineError, match=r"the Docker context 'typo' \(DOCKER_CONTEXT\).*fix: `docker context"):
        engine.engine_address()


@pytest.mark.docker
def test_a_context_pointing_at_the_running_engine_works(clean_env):
    write_context(clean_env, "local-again", engine.DEFAULT_SOCKET)
    client = engine.ensure_engine()
    try:
        assert client.ping() is True
        assert client.api.base_url.startswith("http+docker://")  # the unix socket of the context
    finally:
        client.close()


@pytest.mark.parametrize("command", [
    ["rollout", "--tasks", str(default_tasks_path()), "--out", "{tmp}/run", "--no-progress"],
    ["demo", "--episodes", "1"],
    ["tasks", "build", "--out", "{tmp}/tasks", "--repos", "toolz", "--per-repo", "1"],
    ["reap"],
    ["train", "--out", "{tmp}/train"],
], ids=["rollout", "demo", "tasks-build", "reap", "train"])
def test_commands_say_no_engine_in_one_line(tmp_path, command):
    env = {**os.environ, "DOCKER_HOST": NO_ENGINE}
    argv = [sys.executable, "-m", "lightswe", *(part.format(tmp=tmp_path) for part in command)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    took = time.monotonic() - started
    assert done.returncode != 0
    assert f"no engine at {NO_ENGINE} (DOCKER_HOST" in done.stderr + done.stdout, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "dockerd.log" not in done.stderr, done.stderr[-2000:]
    assert took < 30, took  # interpreter start-up and imports on a loaded machine; the check itself is < 5 s


def test_doctor_names_the_address(tmp_path):
    env = {**os.environ, "DOCKER_HOST": NO_ENGINE}
    done = subprocess.run([sys.executable, "-m", "lightswe", "doctor"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 1
    assert f"no engine at {NO_ENGINE} (DOCKER_HOST" in done.stdout, done.stdout


@pytest.mark.docker
def test_a_base_image_that_is_neither_local_nor_pullable_is_one_line(tmp_path):
    image = "lightswe-test/no-such-base-image:0"  # never built, never published
    env = {**os.environ, "LIGHTSWE_BASE_IMAGE": image}
    done = subprocess.run([sys.executable, "-m", "lightswe", "setup"], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[-1].startswith(f"lightswe setup: error: LIGHTSWE_BASE_IMAGE={image}: not on this machine"), lines
    assert "fix: `docker load` it" in lines[-1]
