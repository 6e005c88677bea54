"""Docker images for tasks: base -> environment (dependencies installed) -> instance (repo at base, no history).

Public API (what the task pool, validation and ``SWEEnv`` call)::

    tag = ensure_env_image(instance)       # "lightswe/env:<key>"; shared by every task of one source + install
    tag = ensure_instance_image(instance)  # "lightswe/instance:<key>"; what SWEEnv starts a sandbox from

Both return at once when an image with their content-hash label exists (labels ``lightswe.env_key`` /
``lightswe.instance_key``); the key hashes every input (base image recipe, source, commit, install command,
and for instances the base tree), so a change rebuilds and nothing stale is reused.

Environment image: a container from the base image gets the source tree at ``environment_setup_commit`` (or
the base commit; for PyPI sources the sdist as shipped) in ``/testbed``; ``install_command`` runs as root with
host networking and the host's CA bundle mounted read-only (``/etc/ssl/certs/ca-certificates.crt``) *only for
this build*; pytest is installed if the install did not bring it; the container is committed. Installing
before any ``git init`` keeps the tree the agent sees clean (an editable install rewrites ``*.egg-info``).

Instance image: a container from the environment image, ``network=none``; ``/testbed`` is brought to the
base tree (files written from ``git archive``, files absent at base deleted), ``.git`` is replaced by a fresh
repository with one commit ``base`` on branch ``main`` (fixed author and date, every file added with ``-f``
so the install artefacts are committed), no tags, no remotes, no reflog; the tree is owned by the ``agent``
user. Neither the fix nor the bug injection is visible through git. The commit is recorded in the image label
``lightswe.base_commit`` (a sandbox reads it instead of running git in the container). Hardening for the
agent: git's ``safe.directory = *`` is removed from ``/etc/gitconfig`` (root never trusts the agent's
repository; the agent owns it, so its own git needs no exception) and no file keeps a setuid/setgid bit.

Images committed from a build container get the sandbox's runtime labels (``lightswe.sandbox``, owner pid,
container name, ...) overridden with empty values, so containers other tools start from them are not
lightswe sandboxes (issue: the orphan reaper removed them).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable

from lightswe.envs.engine import BASE_IMAGE, ensure_base_image, recipe_hash
from lightswe.envs.sandbox import BASE_COMMIT_LABEL, RUNTIME_LABELS, Sandbox, SandboxConfig, default_client
from lightswe.errors import InfrastructureError, LightSWEError, UserInputError
from lightswe.tasks import sources
from lightswe.tasks.instance import TaskInstance

ENV_REPO, INSTANCE_REPO = "lightswe/env", "lightswe/instance"
WORKDIR = "/testbed"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
_RECIPE_VERSION = "1"  # bump when the environment build steps below change (rebuilds every image)
_INSTANCE_RECIPE = "2"  # bump when only the instance build steps change (2: base commit label, hardening)
_PYTEST = "pytest>=7,<9"
_COMMIT_ENV = {"GIT_AUTHOR_NAME": "lightswe", "GIT_AUTHOR_EMAIL": "lightswe@localhost",
               "GIT_COMMITTER_NAME": "lightswe", "GIT_COMMITTER_EMAIL": "lightswe@localhost",
               "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000"}

Progress = Callable[[str], None]


class ImageBuildError(InfrastructureError):
    """An image step failed; carries the command's output tail and what to check."""


def _quiet(_: str) -> None:
    pass


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _check_python(instance: TaskInstance) -> None:
    if not instance.python_version.startswith("3.11"):
        raise UserInputError(f"{instance.instance_id}: python_version {instance.python_version!r} is not available; the "
                         "Debian bookworm base image has Python 3.11; fix: set python_version to '3.11' or name a "
                         "base image with that Python in LIGHTSWE_BASE_IMAGE")


def _env_source(instance: TaskInstance) -> sources.SourceRepo:
    if sources.parse_pypi(instance.source):
        return sources.source_repo(instance)  # the sdist as shipped
    return sources.source_repo(instance, instance.environment_setup_commit or instance.base_commit)


def env_image_key(instance: TaskInstance) -> str:
    repo = _env_source(instance)
    return _hash(_RECIPE_VERSION, recipe_hash(), instance.source or instance.repo, repo.commit,
                 instance.install_command, instance.python_version, _PYTEST)


def _engine_step(what: str):
    """Docker SDK/HTTP errors of one engine call become :class:`ImageBuildError` (the infrastructure branch)."""
    def wrap(function):
        @functools.wraps(function)
        def call(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except LightSWEError:
                raise
            except Exception as err:  # noqa: BLE001 - docker.errors.*, requests.*, ConnectionError
                raise ImageBuildError(f"{what} failed in the Docker engine: {err}; fix: check that the engine "
                                      "answers (`docker info`) and has disk space, then retry") from err
        return call
    return wrap


@_engine_step("looking up a cached image")
def _find(client, label: str, key: str) -> str | None:
    images = client.api.images(filters={"label": f"{label}={key}"})
    return images[0]["Id"] if images else None


@_engine_step("committing the build container to an image")
def _commit(box: Sandbox, repository: str, tag: str, labels: dict[str, str]) -> str:
    """``docker commit`` of a build container with ``labels``; the sandbox's runtime labels are cleared."""
    cleared = {k: "" for k in RUNTIME_LABELS}
    changes = [f"LABEL {k}={json.dumps(v)}" for k, v in {**cleared, **labels}.items()]
    changes += [f"WORKDIR {WORKDIR}", 'CMD ["/bin/bash"]']
    box.api.commit(box.container_id, repository=repository, tag=tag, changes=changes)
    return f"{repository}:{tag}"


@_engine_step("copying the source tree into the build container")
def _put_tree(box: Sandbox, tar_bytes: bytes) -> None:
    box.exec(f"mkdir -p {WORKDIR}", timeout=30, user="root")
    if not box.api.put_archive(box.container_id, WORKDIR, tar_bytes):
        raise ImageBuildError("copying the source tree into the build container failed")


def _run(box: Sandbox, cmd: str, what: str, timeout: float, **kw) -> str:
    result = box.exec(cmd, timeout=timeout, user="root", max_output_bytes=200_000, **kw)
    if result.exit_code != 0:
        raise ImageBuildError(f"{what} failed (exit {result.exit_code}) running `{cmd}`:\n{result.output[-3000:]}")
    return result.output


def ensure_env_image(instance: TaskInstance, client=None, progress: Progress = _quiet,
                     install_timeout: float = 900.0) -> str:
    """The environment image of ``instance`` (built and cached by content hash); returns its tag."""
    _check_python(instance)
    client = client or default_client()
    ensure_base_image(client, progress)
    key = env_image_key(instance)
    tag = f"{ENV_REPO}:{key}"
    if _find(client, "lightswe.env_key", key):
        return tag
    repo = _env_source(instance)
    progress(f"building {tag}: {instance.source or instance.repo} @ {repo.commit[:12]}, `{instance.install_command}`")
    start = time.perf_counter()
    config = SandboxConfig(image=BASE_IMAGE, network="host", read_only_binds={HOST_CA: HOST_CA}, mem_limit="4g",
                           cpus=2.0, pids_limit=1024, user="root", workdir="/", build=True)
    build_env = {"PIP_CERT": HOST_CA, "REQUESTS_CA_BUNDLE": HOST_CA, "SSL_CERT_FILE": HOST_CA,
                 "PIP_NO_CACHE_DIR": "1", "PIP_ROOT_USER_ACTION": "ignore"}
    with Sandbox(config, client=client) as box:
        _put_tree(box, sources.archive(repo))
        _run(box, instance.install_command, "the install command", install_timeout, workdir=WORKDIR, env=build_env)
        _run(box, f"python -c 'import pytest' 2>/dev/null || python -m pip install -q '{_PYTEST}'",
             "installing pytest", install_timeout, workdir=WORKDIR, env=build_env)
        labels = {"lightswe.env_key": key, "lightswe.kind": "env", "lightswe.source": instance.source or instance.repo}
        _commit(box, ENV_REPO, key, labels)
    progress(f"{tag} built in {time.perf_counter() - start:.1f} s")
    return tag


def instance_image_key(instance: TaskInstance) -> str:
    base = sources.base_repo(instance)
    tree = sources._git(base.path, "rev-parse", f"{base.commit}^{{tree}}")
    return _hash(_RECIPE_VERSION, _INSTANCE_RECIPE, env_image_key(instance), tree)


def ensure_instance_image(instance: TaskInstance, client=None, progress: Progress = _quiet) -> str:
    """The image whose ``/testbed`` holds the repository at the base commit as one fresh commit; its tag."""
    client = client or default_client()
    key = instance_image_key(instance)
    tag = f"{INSTANCE_REPO}:{key}"
    if _find(client, "lightswe.instance_key", key):
        return tag
    env_tag = ensure_env_image(instance, client=client, progress=progress)
    env_repo, base = _env_source(instance), sources.base_repo(instance)
    progress(f"building {tag} for {instance.instance_id}")
    stale = sorted(set(sources.tree_files(env_repo)) - set(sources.tree_files(base)))
    config = SandboxConfig(image=env_tag, user="root", workdir=WORKDIR, pids_limit=1024, mem_limit="2g", build=True)
    with Sandbox(config, client=client) as box:
        if stale:  # files of the environment tree that the base does not have
            box.write_file("/tmp/lightswe-stale.json", json.dumps(stale), owner="root")
            _run(box, "python -c \"import json,os; [os.remove(p) for p in json.load(open('/tmp/lightswe-stale.json'))"
                 " if os.path.lexists(p)]\" && rm /tmp/lightswe-stale.json", "removing files absent at base", 60)
        _put_tree(box, sources.archive(base))
        _run(box, "rm -rf .git && git init -q -b main && git add -A -f && git commit -q --no-verify -m base && "
             "git reflog expire --expire=all --all && git gc -q --prune=now && chown -R agent:agent /testbed",
             "making the base commit", 300, env=_COMMIT_ENV)
        commit = _run(box, "git rev-parse HEAD", "reading the base commit", 30).strip()
        _run(box, "git config --system --unset-all safe.directory; "
             "find / -xdev -type f -perm /6000 -exec chmod ug-s {} + ; "
             "test -z \"$(find / -xdev -type f -perm /6000 -print -quit)\"",
             "hardening the image (safe.directory, setuid bits)", 300)
        labels = {"lightswe.instance_key": key, "lightswe.kind": "instance",
                  "lightswe.instance_id": instance.instance_id[:200], BASE_COMMIT_LABEL: commit}
        _commit(box, INSTANCE_REPO, key, labels)
    return tag


def tar_of(files: dict[str, bytes], uid: int = 1000) -> bytes:
    """A tar archive holding ``files`` (relative path -> bytes), owned by ``uid`` (the agent by default)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o644, uid, uid, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
