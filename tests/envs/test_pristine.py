"""Pristine episodes against the real engine: nothing of one episode reaches the next, disk limit, no root
escalation, pool bounds, cleanup after close() and after the owner is killed, and the reaper sparing
containers other tools start from lightswe images (issue 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import container_exists

pytestmark = pytest.mark.docker

# What an agent could leave behind, everywhere it can write (episode 1 of a group, as the agent user).
_POLLUTE = r"""
set -e
cd /testbed
git apply - <<'PATCH'
{patch}
PATCH
git stash -q
git checkout -q -b solution
git stash apply -q
git commit -qam fix
git tag v-fix
git notes add -m note HEAD
git checkout -q main
git replace "$(git rev-parse main:{path})" "$(git rev-parse solution:{path})"
printf '#!/bin/sh\ncp -r /tmp /var/tmp/hooked\n' > .git/hooks/post-checkout && chmod +x .git/hooks/post-checkout
git config core.fsmonitor 'touch /tmp/fsmonitor-ran'
echo '* filter=evil' > .git/info/attributes
site=$(python -c 'import site; print(site.getusersitepackages())')
mkdir -p "$site" && echo 'import builtins' > "$site/usercustomize.py" && echo 'import os' > "$site/evil.pth"
git config --global core.hooksPath /var/tmp/hooks
mkdir -p ~/.cache && echo x > ~/.cache/leak
echo x > /tmp/leak; echo x > /var/tmp/leak; echo x > /dev/shm/leak
(setsid sleep 1000 > /dev/null 2>&1 &)
(setsid python -c 'import time; time.sleep(1000)' > /dev/null 2>&1 &)
sleep 1; echo polluted
"""

# Everything the pollution could have touched, as text (run as the agent in a fresh and a used container).
_FINGERPRINT = r"""
cd /testbed
echo "stash: $(git stash list | wc -l)"
echo "branches: $(git branch -a --format='%(refname)' | tr '\n' ' ')"
echo "refs: $(git for-each-ref --format='%(refname)' | tr '\n' ' ')"
echo "tags: $(git tag | wc -l) notes: $(git notes list 2>/dev/null | wc -l) replace: $(git replace -l | wc -l)"
echo "reflog: $(git reflog --all 2>/dev/null | wc -l) objects: $(git count-objects -v | grep -E '^(count|in-pack)' | tr '\n' ' ')"
echo "hooks: $(ls .git/hooks | md5sum) config: $(md5sum < .git/config) info: $(cat .git/info/* 2>/dev/null | md5sum)"
echo "status: $(git status --porcelain --ignored | wc -l)"
echo "home: $(ls -A ~ | tr '\n' ' ')"
echo "tmp: $(ls -A /tmp /var/tmp /dev/shm | tr '\n' ' ')"
echo "procs: $(pgrep -u agent -c -x sleep) $(pgrep -u agent -f -c 'time[.]sleep')"
echo "usersite: $(ls -A "$(python -c 'import site; print(site.getusersitepackages())')" 2>&1 | wc -l)"
"""


def _gone(container_id: str, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not container_exists(container_id):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def env():
    import gymnasium as gym

    import lightswe  # noqa: F401 - registers the ids
    from lightswe.envs.pool import PoolConfig

    made = gym.make("lightswe/SWE-v0", pool_config=PoolConfig(idle=1))
    made.reset(seed=0)
    yield made.unwrapped
    made.close()


def test_second_episode_of_a_group_sees_nothing_of_the_first(env):
    task = env.task
    env.reset(options={"task_id": task.instance_id})
    first = env.sandbox
    first_id = first.container_id
    pristine = first.exec(_FINGERPRINT, timeout=60).output
    path = task.patch.split("\n", 1)[0].split()[-1].removeprefix("b/")
    polluted = first.exec(_POLLUTE.format(patch=task.patch.rstrip("\n"), path=path), timeout=120)
    assert polluted.exit_code == 0 and "polluted" in polluted.output, polluted.output
    dirty = first.exec(_FINGERPRINT, timeout=60).output
    assert dirty != pristine  # the fingerprint sees every kind of leftover
    for line in ("stash: 1", "tags: 1 notes: 1 replace: 1", "procs: 1 1", "usersite: 2"):
        assert line in dirty, (line, dirty)

    env.reset(options={"task_id": task.instance_id})  # as agent/rollout.py runs a group's next sample
    second = env.sandbox
    assert second.container_id != first_id
    after = second.exec(_FINGERPRINT, timeout=60).output
    assert after == pristine, f"pristine:\n{pristine}\nafter reset:\n{after}"
    assert second.exec("git log --oneline --all | wc -l", timeout=30).output.strip() == "1"  # one commit
    assert _gone(first_id)  # the used container is removed (in the background)

    _, reward, terminated, _, info = env.step('<tool_calls>\n{"name": "submit", "arguments": {}}\n</tool_calls>')
    assert terminated and reward == 0.0, info  # the stashed / committed fix of episode 1 is nowhere


def test_the_image_gives_the_agent_no_way_to_root(env):
    box = env.sandbox
    setuid = box.exec("find / -xdev -type f -perm /6000 2>/dev/null | wc -l", timeout=120, user="root")
    assert setuid.output.strip() == "0"
    status = box.exec("grep -E '^(NoNewPrivs|CapEff)' /proc/self/status", timeout=10).output.split()
    assert status == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1"], status
    bounding = int(box.exec("grep CapBnd /proc/self/status", timeout=10, user="root").output.split()[1], 16)
    assert bounding & (1 << 21) == 0 and bounding & (1 << 27) == 0  # no CAP_SYS_ADMIN, no CAP_MKNOD
    assert "safe" not in box.exec("git config --system --list", timeout=10).output
    # root does not trust the agent's repository, so it cannot run what the agent put in .git/config
    refused = box.exec("git -C /testbed status", timeout=10, user="root")
    assert refused.exit_code != 0 and "dubious ownership" in refused.output
    # the base commit is the image's label, equal to the repository's HEAD
    label = box.client.api.inspect_image(box.config.image)["Config"]["Labels"]["lightswe.base_commit"]
    assert box.base_commit == label == box.exec("git rev-parse HEAD", timeout=10).output.strip()


def test_disk_limit_holds_and_space_comes_back(env):
    from lightswe.envs.sandbox import Sandbox

    config = env.sandbox_config(env.task)
    config.disk_limit = "96m"
    with Sandbox(config) as box:
        volume = box._volume.dir if box._volume is not None else None
        big = box.exec("fallocate -l 12G /tmp/big; echo exit=$?; ls -s /tmp", timeout=60)
        assert "exit=0" not in big.output, big.output
        many = box.exec("for i in $(seq 1 200000); do echo data > /var/tmp/f$i || break; done; echo i=$i",
                        timeout=120)
        assert many.disk_full and "disk limit of 96m is reached" in many.output, many.output[-500:]
        stream = box.exec("yes 0123456789abcdef > /tmp/stream", timeout=120)
        assert stream.disk_full and not stream.timed_out
        freed = box.exec("rm -rf /var/tmp/f* /tmp/stream /tmp/big; echo ok > /tmp/after && cat /tmp/after", timeout=60)
        assert freed.output.startswith("ok") and not freed.disk_full
    if volume is not None:  # loop mode: the volume is unmounted and its file deleted
        assert not volume.exists()
        with open("/proc/self/mounts") as handle:
            assert str(volume) not in handle.read()


def test_pool_idle_is_bounded_and_close_removes_everything(env):
    from lightswe.envs.engine import BASE_IMAGE
    from lightswe.envs.pool import PoolConfig, SandboxPool
    from lightswe.envs.sandbox import SandboxConfig

    mark = {"lightswe.test": f"pool-{os.getpid()}"}
    instance = env.sandbox_config(env.task)
    instance.labels = mark
    base = SandboxConfig(image=BASE_IMAGE, workdir="/home/agent", labels=mark)
    pool = SandboxPool(PoolConfig(idle=2, max_configs=1))
    taken = [pool.acquire(instance)]
    assert pool.idle_count(instance) == 2
    taken.append(pool.acquire(base))  # another image: the first one's idle containers are dropped
    assert pool.idle_count(instance) == 0 and pool.idle_count() == 2
    pool.wait_ready(base)
    box = pool.acquire(base)
    assert box.exec("true", timeout=10).duration_s < 1.0 and pool.cold_starts == 2  # the second was warm
    taken.append(box)
    mine = pool.client.api.containers(all=True, filters={"label": f"lightswe.test={mark['lightswe.test']}"})
    ids = {c["Id"] for c in mine}
    assert len(ids) <= len(taken) + 2 + 2  # in use + idle + the dropped ones still being removed
    pool.close()
    for box in taken:
        assert container_exists(box.container_id)  # acquired sandboxes belong to the caller
        box.close()
    for container_id in ids:
        assert _gone(container_id, within=10)


_OWNER = """
import sys
import lightswe
from lightswe.envs.pool import PoolConfig
import gymnasium as gym
env = gym.make("lightswe/SWE-v0", pool_config=PoolConfig(idle=2))
env.reset(seed=0)
env.unwrapped.pool.wait_ready(env.unwrapped.sandbox_config(env.unwrapped.task))
print(env.unwrapped.sandbox._volume.dir if env.unwrapped.sandbox._volume else "", flush=True)
if sys.argv[1] == "close":
    env.close()
    print("closed", flush=True)
elif sys.argv[1] == "exit":  # no close(): the atexit hook removes the idle and the episode's containers
    print("closed", flush=True)
    sys.exit(0)
else:
    import time; time.sleep(600)
"""


@pytest.mark.parametrize("ending", ["close", "exit", "kill"])
def test_no_container_or_volume_outlives_its_owner(env, ending):
    import docker

    from lightswe.envs.sandbox import reap_orphans

    owner = subprocess.Popen([sys.executable, "-c", _OWNER, ending], stdout=subprocess.PIPE, text=True)
    client = docker.from_env()
    try:
        volume = owner.stdout.readline().strip()
        label = {"label": f"lightswe.owner_pid={owner.pid}"}
        made = client.api.containers(all=True, filters=label)
        if ending in ("close", "exit"):
            assert owner.stdout.readline().strip() == "closed"
            owner.wait(timeout=60)
        else:
            assert len(made) == 3  # the episode's and two idle ones
            os.kill(owner.pid, signal.SIGKILL)
            owner.wait(timeout=30)
            removed = reap_orphans()
            assert {c["Id"] for c in made} <= set(removed)
        assert client.api.containers(all=True, filters=label) == []
        if volume:
            assert not os.path.exists(volume)
    finally:
        if owner.poll() is None:
            owner.kill()


def test_reaper_spares_containers_other_tools_start_from_lightswe_images(env):
    """Issue 14: images committed from a sandbox carried its labels, so the reaper removed foreign containers."""
    import docker

    from lightswe.envs.sandbox import LABEL, Sandbox, SandboxConfig, reap_orphans
    from lightswe.tasks.images import _commit

    client = docker.from_env()
    tag = f"lightswe-test/committed:{os.getpid()}"
    legacy = f"lightswe-test/legacy:{os.getpid()}"
    foreign = []
    try:
        with Sandbox(SandboxConfig(image=env.sandbox.config.image, build=True, workdir="/testbed")) as box:
            _commit(box, *tag.split(":"), {"lightswe.kind": "test"})
            box.api.commit(box.container_id, *legacy.split(":"))  # as before the fix: the sandbox's labels kept
        assert client.images.get(tag).labels.get(LABEL) == ""
        assert client.images.get(legacy).labels.get(LABEL) == "1"  # a stale label, dead owner
        for image in (tag, legacy):  # what SWE-ReX or mini-swe-agent do: a plain `docker run`
            foreign.append(client.containers.run(image, ["sleep", "600"], detach=True, network_mode="none",
                                                 labels={"lightswe.test": "foreign"}))
        removed = reap_orphans()
        for container in foreign:
            assert container.id not in removed and container_exists(container.id)
    finally:
        for container in foreign:
            container.remove(force=True)
        for image in (tag, legacy):
            try:
                client.images.remove(image, force=True)
            except docker.errors.ImageNotFound:
                pass
