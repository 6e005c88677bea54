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
agent, the last step of both the built and the adopted images (:func:`_harden`): git's ``safe.directory`` is
removed from every file root's git reads (system, global, XDG) and the build checks that no scope still sets it
(root never trusts the agent's repository; the agent owns it, so its own git needs no exception); no file
keeps a setuid/setgid bit. The base image keeps ``safe.directory = *`` because root runs git in trees of other
owners while images are built (``lightswe.envs.engine``).

Images committed from a build container get the sandbox's runtime labels (``lightswe.sandbox``, owner pid,
container name, ...) overridden with empty values, so containers other tools start from them are not
lightswe sandboxes (issue: the orphan reaper removed them).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Callable

from lightswe.envs.engine import PYTHON_SUITES, ensure_python_base, recipe_hash
from lightswe.envs.sandbox import BASE_COMMIT_LABEL, RUNTIME_LABELS, Sandbox, SandboxConfig, default_client
from lightswe.errors import InfrastructureError, LightSWEError
from lightswe.tasks import sources
from lightswe.tasks.instance import TaskInstance

ENV_REPO, INSTANCE_REPO = "lightswe/env", "lightswe/instance"
WORKDIR = "/testbed"
AGENT_HOME = "/home/agent"
_PIP_CACHE = "/tmp/lightswe-pip-cache"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
_RECIPE_VERSION = "2"  # bump when the environment build steps below change (rebuilds every image)
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


def _base_recipe(instance: TaskInstance) -> str:
    """What identifies the base image of ``instance``'s Python (part of the environment key)."""
    short = ".".join(instance.python_version.split(".")[:2])
    if short == "3.11":
        return recipe_hash()
    return f"{PYTHON_SUITES.get(short, 'named')}:{recipe_hash(PYTHON_SUITES.get(short, short))}"


def pretend_version(instance: TaskInstance) -> str:
    """A PEP 440 version for build tools that read it from git (setuptools-scm): the row's ``version``."""
    version = instance.version.strip()
    if re.fullmatch(r"\d+(\.\d+)*", version):
        return version if version.count(".") >= 2 else version + ".0"
    pypi = sources.parse_pypi(instance.source)
    return pypi[1] if pypi else "0.0.0"


def _env_source(instance: TaskInstance) -> sources.SourceRepo:
    if sources.parse_pypi(instance.source):
        return sources.source_repo(instance)  # the sdist as shipped
    return sources.source_repo(instance, instance.environment_setup_commit or instance.base_commit)


def env_image_key(instance: TaskInstance) -> str:
    repo = _env_source(instance)
    return _hash(_RECIPE_VERSION, _base_recipe(instance), instance.source or instance.repo, repo.commit,
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
            except Exception as err:
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
        raise ImageBuildError("copying the source tree into the build container failed (the engine refused the "
                              "archive); fix: check the engine's disk space (`docker system df`) and retry")


def _run(box: Sandbox, cmd: str, what: str, timeout: float, **kw) -> str:
    result = box.exec(cmd, timeout=timeout, user="root", max_output_bytes=200_000, **kw)
    if result.timed_out:
        shown = cmd if len(cmd) <= 300 else cmd[:300] + " ..."
        raise ImageBuildError(f"{what} timed out after {timeout:g} s; fix: raise the install timeout "
                              f"(install_timeout) or trim the install; its last lines:\n"
                              f"{_last_lines(result.output)}\n(command: `{shown}`)")
    if result.exit_code != 0:
        shown = cmd if len(cmd) <= 300 else cmd[:300] + " ..."
        raise ImageBuildError(f"{what} failed (exit {result.exit_code}); its last lines:\n{_last_lines(result.output)}"
                              f"\n(command: `{shown}`; fix: the lines above say why, e.g. a missing dependency or "
                              "a network error: check the task's install_command)")
    return result.output


_CAUSE = re.compile(r"^\s*(?:ERROR:|error:|E\s{2,}|(?:\w+\.)*\w*(?:Error|Exception|Exit)\b:?)")


def _last_lines(text: str, lines: int = 15, width: int = 2500) -> str:
    """A failed command's cause first (its error lines, e.g. pip's ``ERROR:`` or an exception line), then the
    last non-empty lines of its output."""
    all_lines = [line for line in text.strip().splitlines() if line.strip()]
    causes = [line.strip() for line in all_lines if _CAUSE.match(line)]
    head = "\n".join(dict.fromkeys(causes[:2] + causes[-2:]))  # first and last error lines, once each
    tail = "\n".join(all_lines[-lines:])
    return (f"{head[:1000]}\n--- last lines ---\n{tail[-width:]}" if head else tail[-width:])


def ensure_env_image(instance: TaskInstance, client=None, progress: Progress = _quiet,
                     install_timeout: float = 1800.0) -> str:
    """The environment image of ``instance`` (built and cached by content hash); returns its tag."""
    client = client or default_client()
    key = env_image_key(instance)
    tag = f"{ENV_REPO}:{key}"
    if _find(client, "lightswe.env_key", key):
        return tag
    base_image = ensure_python_base(instance.python_version, client, progress)  # ValueError: the options
    repo = _env_source(instance)
    progress(f"building {tag}: {instance.source or instance.repo} @ {repo.commit[:12]}, `{instance.install_command}`")
    start = time.perf_counter()
    config = SandboxConfig(image=base_image, network="host", read_only_binds={HOST_CA: HOST_CA}, mem_limit="4g",
                           cpus=2.0, pids_limit=1024, user="root", workdir="/", build=True)
    # HOME is the agent's: what the install fetches into ~ (data, caches) is where the tests look for it.
    # The tree has no .git: setuptools-scm gets the row's version instead of failing.
    # pip's cache lives in /tmp for this build only (a retry of a failed requirement set reuses the downloads
    # and built wheels) and is removed before the commit.
    build_env = {"PIP_CERT": HOST_CA, "REQUESTS_CA_BUNDLE": HOST_CA, "SSL_CERT_FILE": HOST_CA,
                 "PIP_CACHE_DIR": _PIP_CACHE, "PIP_ROOT_USER_ACTION": "ignore", "HOME": AGENT_HOME,
                 "SETUPTOOLS_SCM_PRETEND_VERSION": pretend_version(instance)}
    with Sandbox(config, client=client) as box:
        _put_tree(box, sources.archive(repo))
        # Debian's pip of older releases (20.3 in bullseye) cannot drive today's setuptools: bring pip up first.
        _run(box, "python -c 'import pip, sys; sys.exit(int(pip.__version__.split(\".\")[0]) < 23)' || "
             "python -m pip install -q 'pip>=23.1'", "updating pip", install_timeout, env=build_env)
        _run(box, instance.install_command, "the install command", install_timeout, workdir=WORKDIR, env=build_env)
        _run(box, f"python -c 'import pytest' 2>/dev/null || python -m pip install -q '{_PYTEST}'",
             "installing pytest", install_timeout, workdir=WORKDIR, env=build_env)
        _run(box, f"rm -rf {_PIP_CACHE} && mkdir -p {AGENT_HOME} && chown -R agent:agent {AGENT_HOME}",
             "giving the agent its home", 120)
        labels = {"lightswe.env_key": key, "lightswe.kind": "env", "lightswe.source": instance.source or instance.repo}
        _commit(box, ENV_REPO, key, labels)
    progress(f"{tag} built in {time.perf_counter() - start:.1f} s")
    return tag


def instance_image_key(instance: TaskInstance) -> str:
    if instance.image_name:
        return _hash(_RECIPE_VERSION, "prebuilt", _image_id(instance.image_name), instance.metadata.get("bug_patch", ""))
    base = sources.base_repo(instance)
    tree = sources._git(base.path, "rev-parse", f"{base.commit}^{{tree}}")
    return _hash(_RECIPE_VERSION, _INSTANCE_RECIPE, env_image_key(instance), tree)


# Every file git reads settings from as root: system, root's global (~/.gitconfig and the XDG one).
_ROOT_GIT_CONFIGS = ("--system", "--global", "--file /root/.config/git/config")
_HARDEN = "; ".join(f"git config {where} --unset-all safe.directory 2>/dev/null" for where in _ROOT_GIT_CONFIGS) + (
    "; find / -xdev -type f -perm /6000 -exec chmod ug-s {} + ; "
    "test -z \"$(find / -xdev -type f -perm /6000 -print -quit)\"")


def _harden(box: Sandbox) -> None:
    """The last step of every instance image (built or adopted): root trusts no repository, no set-id file.

    Removes ``safe.directory`` from every file git reads as root (the base image's ``/etc/gitconfig`` sets it
    for the builds; a prebuilt image may set it in root's own config), drops every setuid/setgid bit, then
    proves it: ``git config --get-all safe.directory`` as root must find nothing in any scope (an image ``ENV``
    such as ``GIT_CONFIG_PARAMETERS`` that sets it cannot be removed here and fails the build).

    Raises:
        ImageBuildError: a step failed or ``safe.directory`` is still set (where, from ``--show-origin``).
    """
    _run(box, _HARDEN, "hardening the image (safe.directory, setuid bits)", 300)
    left = box.exec("git config --show-origin --get-all safe.directory", timeout=30, user="root", workdir="/")
    if left.exit_code != 1 or left.output.strip():
        raise ImageBuildError(f"hardening the image: root's git still trusts other users' repositories "
                              f"(safe.directory: {left.output.strip()[-300:] or f'exit {left.exit_code}'}); fix: "
                              "remove it from the image's environment (GIT_CONFIG_* variables) or config files")


def ensure_instance_image(instance: TaskInstance, client=None, progress: Progress = _quiet) -> str:
    """The image whose ``/testbed`` holds the repository at the base commit as one fresh commit; its tag."""
    client = client or default_client()
    key = instance_image_key(instance)
    tag = f"{INSTANCE_REPO}:{key}"
    if _find(client, "lightswe.instance_key", key):
        return tag
    if instance.image_name:
        return _adopt_prebuilt(instance, client, key, progress)
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
        if env_repo.commit != base.commit and not sources.parse_pypi(instance.source):
            _refresh_metadata(box, instance, set(sources.tree_files(base)))
        _run(box, "rm -rf .git && git init -q -b main && git config gc.auto 0 && git add -A -f && git commit -q --no-verify -m base && "
             "git reflog expire --expire=all --all && git gc -q --prune=now && chown -R agent:agent /testbed",
             "making the base commit", 300, env=_COMMIT_ENV)
        commit = _run(box, "git rev-parse HEAD", "reading the base commit", 30).strip()
        _harden(box)
        labels = {"lightswe.instance_key": key, "lightswe.kind": "instance",
                  "lightswe.instance_id": instance.instance_id[:200], BASE_COMMIT_LABEL: commit}
        _commit(box, INSTANCE_REPO, key, labels)
    return tag


# The base commit's repository sets gc.auto 0: committing a large tree (Django: 6000 files) would otherwise start a
# background gc that collides with the explicit `git gc --prune=now` ("gc is already running").
_METADATA_DIRS = "find . -path ./.git -prune -o -type d -name '*.egg-info' -print"


def _refresh_metadata(box: Sandbox, instance: TaskInstance, base_files: set[str]) -> None:
    """Regenerate, at the base, the package metadata the install wrote at ``environment_setup_commit``.

    An install at a later commit leaves ``*.egg-info`` in the tree with the later version and the names of
    files added later (``SOURCES.txt``). They are removed (unless tracked at the base) and made again from
    the base tree with the environment's own build tools, offline (``pip install --no-deps
    --no-build-isolation --no-index -e .``); if that cannot run (the build backend was only in pip's isolated
    build environment), they stay removed: the editable install still imports the package from the tree.
    """
    listed = box.exec(_METADATA_DIRS, timeout=60, user="root", workdir=WORKDIR, max_output_bytes=1 << 20)
    generated = [p[2:] for p in listed.output.split() if p.startswith("./")
                 and not any(f.startswith(p[2:] + "/") for f in base_files)]
    if not generated:
        return
    quoted = " ".join(f"'{p}'" for p in generated)
    env = {"HOME": AGENT_HOME, "SETUPTOOLS_SCM_PRETEND_VERSION": pretend_version(instance),
           "PIP_NO_INDEX": "1", "PIP_ROOT_USER_ACTION": "ignore"}
    box.exec(f"rm -rf {quoted} && (python -m pip install -q --no-deps --no-build-isolation --no-index -e . "
             f">/tmp/lightswe-reinstall.log 2>&1 || rm -rf {quoted}); rm -rf build", timeout=600, user="root",
             workdir=WORKDIR, env=env)


def _image_id(name: str) -> str:
    """The local id of image ``name`` (pulled when absent); ImageBuildError naming the fix otherwise."""
    import docker

    client = default_client()
    try:
        return client.images.get(name).id
    except docker.errors.ImageNotFound:
        pass
    try:
        return client.images.pull(name).id
    except Exception as err:  # noqa: BLE001 - no registry, unknown name, no credentials
        raise ImageBuildError(f"the row's image_name {name!r} is not on this machine and cannot be pulled "
                              f"({str(err).splitlines()[0][:200]}); fix: `docker pull {name}` where a registry is "
                              "reachable and `docker save`/`docker load` it here, or drop image_name to build "
                              "from the source") from None


# What the image's own interactive shell sets up (a conda env activated in /root/.bashrc, a venv): kept as ENV.
_SHELL_VARS = ("PATH", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "CONDA_SHLVL", "VIRTUAL_ENV", "PYTHONPATH",
               "LD_LIBRARY_PATH")


def _adopt_prebuilt(instance: TaskInstance, client, key: str, progress: Progress) -> str:
    """An instance image from a prebuilt environment image (SWE-smith, SWE-Gym, SWE-bench ``sweb.eval.*``).

    Such images hold the repository (installed) in ``/testbed``, run as root, and often have their Python in
    a conda environment that only ``/root/.bashrc`` activates; they have no ``agent`` user. Adoption, in a
    container of the image with no network: the environment an interactive root shell gets (PATH, conda
    and venv variables) is read and kept as the image's ENV, so every command (the agent's, the grader's)
    finds the same Python; an ``agent`` user (uid 1000, alias of an existing uid-1000 user if any) is added
    with a home; a SWE-smith bug (``metadata["bug_patch"]``) is applied; ``.git`` is replaced by one fresh
    commit (no history, so no future commits); the tree is given to the agent. The image itself is untouched.
    """
    tag = f"{INSTANCE_REPO}:{key}"
    progress(f"adopting {instance.image_name} as {tag} for {instance.instance_id}")
    config = SandboxConfig(image=instance.image_name, user="root", workdir="/", pids_limit=1024, mem_limit="2g",
                           build=True)
    with Sandbox(config, client=client) as box:
        probe = box.exec("bash -ic 'env -0' 2>/dev/null </dev/null", timeout=60, user="root",
                         max_output_bytes=1 << 20)
        shell = dict(item.partition("=")[::2] for item in probe.output.split("\0") if "=" in item)
        env = {name: shell[name] for name in _SHELL_VARS if shell.get(name)}
        has_repo = box.exec(f"test -d {WORKDIR} && git -C {WORKDIR} rev-parse --is-inside-work-tree", timeout=30,
                            user="root")
        if has_repo.exit_code != 0:
            raise ImageBuildError(f"{instance.image_name} has no git repository in {WORKDIR}; fix: a prebuilt image "
                                  f"must hold the task's repository at {WORKDIR} (SWE-bench/SWE-smith layout)")
        _run(box, "id -u agent >/dev/null 2>&1 || { "
             "echo 'agent:x:1000:1000:lightswe agent:/home/agent:/bin/bash' >> /etc/passwd; "
             "grep -q '^[^:]*:[^:]*:1000:' /etc/group || echo 'agent:x:1000:' >> /etc/group; "
             "grep -q '^agent:' /etc/shadow 2>/dev/null || echo 'agent:*:19000:0:99999:7:::' >> /etc/shadow; }; "
             f"mkdir -p {AGENT_HOME} && chown 1000:1000 {AGENT_HOME}", "adding the agent user", 60)
        bug = instance.metadata.get("bug_patch", "")
        if bug:
            box.write_file("/tmp/lightswe-bug.diff", bug, owner="root")
            _run(box, "git apply --whitespace=nowarn /tmp/lightswe-bug.diff && rm /tmp/lightswe-bug.diff",
                 "applying the SWE-smith bug patch", 120, workdir=WORKDIR)
        _run(box, "rm -rf .git && git init -q -b main && git config gc.auto 0 && git add -A -f && git commit -q --no-verify -m base && "
             "git reflog expire --expire=all --all && git gc -q --prune=now && chown -R 1000:1000 /testbed",
             "making the base commit", 600, workdir=WORKDIR, env=_COMMIT_ENV)
        check = box.exec("python -c 'import pytest' 2>&1 || python3 -c 'import pytest' 2>&1", timeout=60,
                         user="root", workdir=WORKDIR, env=env)
        if check.exit_code != 0 and not instance.log_parser:
            raise ImageBuildError(f"{instance.image_name}: pytest is not importable with the image's environment "
                                  f"(PATH={env.get('PATH', '?')}): {check.output.strip()[-300:]}; fix: use an image "
                                  "whose environment has the test runner installed")
        commit = _run(box, "git rev-parse HEAD", "reading the base commit", 30, workdir=WORKDIR).strip()
        _harden(box)
        labels = {"lightswe.instance_key": key, "lightswe.kind": "instance", "lightswe.prebuilt": instance.image_name,
                  "lightswe.instance_id": instance.instance_id[:200], BASE_COMMIT_LABEL: commit}
        cleared = {k: "" for k in RUNTIME_LABELS}
        changes = [f"LABEL {k}={json.dumps(v)}" for k, v in {**cleared, **labels}.items()]
        changes += [f"ENV {k}={json.dumps(v)}" for k, v in env.items()] + [f"WORKDIR {WORKDIR}", 'CMD ["/bin/bash"]',
                                                                            "USER root"]
        box.api.commit(box.container_id, repository=INSTANCE_REPO, tag=key, changes=changes)
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
