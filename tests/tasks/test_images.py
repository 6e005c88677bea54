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


# Root's git must never trust the agent's repository (it would run what the agent wrote in .git/config): the base
# image sets safe.directory = * for the builds, and every instance image, built or adopted, ends without it.
TRUSTED = "git config --show-origin --get-all safe.directory"


def test_a_built_instance_image_trusts_no_repository(demo):
    with Sandbox(SandboxConfig(image=images.ensure_instance_image(demo))) as box:
        left = box.exec(TRUSTED, timeout=30, user="root", workdir="/")
        assert (left.exit_code, left.output) == (1, ""), left.output
        refused = box.exec("git -C /testbed status", timeout=30, user="root")
        assert refused.exit_code != 0 and "dubious ownership" in refused.output


def _prebuilt(tag: str, env: dict[str, str]) -> str:
    """A local image laid out as a prebuilt one (/testbed a git repository), whose root trusts every repository
    in all three of its config files, and whose ENV carries ``env``."""
    import json

    from lightswe.envs.engine import BASE_IMAGE

    config = SandboxConfig(image=BASE_IMAGE, user="root", workdir="/", labels={"lightswe.test": "harden"}, build=True)
    with Sandbox(config) as box:
        made = box.exec("mkdir -p /testbed /root/.config/git && cd /testbed && git init -q && echo 'x = 1' > m.py && "
                        "git add -A && git commit -qm base && git config --global safe.directory '*' && "
                        "git config --file /root/.config/git/config safe.directory /testbed && "
                        "git config --system --add safe.directory /testbed", timeout=60, user="root")
        assert made.exit_code == 0, made.output
        box.api.commit(box.container_id, repository="lightswe-test/prebuilt", tag=tag,
                       changes=["LABEL lightswe.test=harden", *(f"ENV {k}={json.dumps(v)}" for k, v in env.items())])
    return f"lightswe-test/prebuilt:{tag}"


@pytest.mark.parametrize("how", ["config-files", "image-env"])
def test_an_adopted_prebuilt_image_trusts_no_repository(demo, how):
    """Adoption removes safe.directory from the system, global and XDG files; one set by the image's ENV
    (``GIT_CONFIG_*``) cannot be removed, so the build fails naming it instead of shipping a trusting image."""
    import uuid

    from lightswe.envs.sandbox import default_client

    env = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"} \
        if how == "image-env" else {}
    client = default_client()
    prebuilt = _prebuilt(uuid.uuid4().hex[:12], env)
    task = type(demo)(instance_id=f"harden-{how}", repo="local/harden", base_commit="", patch="",
                      problem_statement="x", FAIL_TO_PASS=["m.py::test_x"], image_name=prebuilt,
                      log_parser="django/django")  # a log parser: the base image has no pytest to check
    try:
        if how == "image-env":
            with pytest.raises(images.ImageBuildError, match=r"still trusts .*safe\.directory.*GIT_CONFIG_"):
                images.ensure_instance_image(task)
            return
        tag = images.ensure_instance_image(task)
        with Sandbox(SandboxConfig(image=tag)) as box:
            left = box.exec(TRUSTED, timeout=30, user="root", workdir="/")
            assert (left.exit_code, left.output) == (1, ""), left.output
            refused = box.exec("git -C /testbed status", timeout=30, user="root")
            assert refused.exit_code != 0 and "dubious ownership" in refused.output
    finally:  # the instance image adopted from it (also one a regression let through), then the prebuilt one
        for image in client.images.list(filters={"label": f"lightswe.prebuilt={prebuilt}"}):
            client.images.remove(image.id, force=True)
        client.images.remove(prebuilt, force=True)
