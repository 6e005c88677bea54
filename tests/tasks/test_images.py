"""Environment and instance images: cached by content hash; /testbed is one fresh commit owned by the agent."""

from __future__ import annotations

import time

import pytest

from lightswe.envs.sandbox import Sandbox, SandboxConfig
from lightswe.envs.swe_env import default_tasks_path
from lightswe.tasks import images
from lightswe.tasks.instance import read_jsonl

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def demo():
    return read_jsonl(default_tasks_path())[0]


def test_images_are_cached_by_content(demo):
    images.ensure_instance_image(demo)
    start = time.perf_counter()
    tag = images.ensure_instance_image(demo)
    assert time.perf_counter() - start < 3.0
    assert tag == f"{images.INSTANCE_REPO}:{images.instance_image_key(demo)}"
    changed = type(demo)(**{**demo.to_dict(), "install_command": "python -m pip install ."})
    assert images.env_image_key(changed) != images.env_image_key(demo)


def test_instance_state(demo):
    with Sandbox(SandboxConfig(image=images.ensure_instance_image(demo))) as box:
        out = box.exec("git log --all --format='%an %s' | wc -l; git tag | wc -l; git remote | wc -l; "
                       "git status --porcelain | wc -l; git branch --show-current; stat -c %U toolz/itertoolz.py; "
                       "git reflog | wc -l; python -c 'import toolz, sys; print(toolz.__file__)'", timeout=30).output
        assert out.split() == ["1", "0", "0", "0", "main", "agent", "0", "/testbed/toolz/__init__.py"], out
        assert b"islice(seq, n + 1, None)" in box.read_file("toolz/itertoolz.py")  # the bug is in place


def test_python_version_is_checked(demo):
    other = type(demo)(**{**demo.to_dict(), "python_version": "3.8"})
    with pytest.raises(ValueError, match=r"no base image has Python 3\.8: .* offers Python 3\.9 \(Debian bullseye\), 3\.11"):
        images.ensure_env_image(other)
