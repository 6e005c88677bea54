"""The Docker engine and the base image every sandbox starts from.

``ensure_engine()`` returns a client whose engine answers: when none does and we run as root it installs
Debian's ``docker.io`` (if ``dockerd`` is missing), starts ``dockerd`` in the background (log in
``~/.cache/lightswe/dockerd.log``) and waits; otherwise it raises :class:`EngineError` naming the fix.

``ensure_base_image()`` returns the base image tag (``lightswe/base:bookworm``). A user with a registry names
an image in ``LIGHTSWE_BASE_IMAGE`` and it is pulled; otherwise the image is built offline-friendly:
``debootstrap --variant=minbase`` of Debian bookworm (python3, venv, pip, git) from the mirror this machine's
apt already uses, then ``docker import``. The image carries a label with a hash of the recipe below, so a
second run finds it and returns in well under a second; changing the recipe rebuilds.

Inside the image: a non-root user ``agent`` (uid 1000) for the agent's commands, ``python`` on PATH, pip
allowed to install into the system Python (PEP 668 marker removed: the image is single-purpose), and git's
``safe.directory = *`` (sdist files belong to another uid).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lightswe.errors import InfrastructureError

BASE_IMAGE = "lightswe/base:bookworm"
RECIPE_LABEL = "lightswe.recipe"
CACHE_DIR = Path(os.environ.get("LIGHTSWE_CACHE", Path.home() / ".cache" / "lightswe"))
AGENT_UID = 1000

_SUITE = "bookworm"
# Python of each Debian release the mirror serves (buster, Python 3.7, is archived: not on the mirror).
PYTHON_SUITES = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}
_PACKAGES = ("python3", "python3-venv", "python3-pip", "git", "ca-certificates", "procps")
# Run inside the unpacked root file system (chroot) after debootstrap; part of the recipe hash.
_POST_INSTALL = f"""set -e
echo 'agent:x:{AGENT_UID}:{AGENT_UID}:lightswe agent:/home/agent:/bin/bash' >> /etc/passwd
echo 'agent:x:{AGENT_UID}:' >> /etc/group
echo 'agent:*:19000:0:99999:7:::' >> /etc/shadow
mkdir -p /home/agent && chown {AGENT_UID}:{AGENT_UID} /home/agent
ln -sf /usr/bin/python3 /usr/local/bin/python
rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
printf '[safe]\\n\\tdirectory = *\\n[user]\\n\\tname = lightswe\\n\\temail = lightswe@localhost\\n' > /etc/gitconfig
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* /usr/share/info/*
"""
_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "ENV PIP_DISABLE_PIP_VERSION_CHECK=1",
    'CMD ["/bin/bash"]',
)

Progress = Callable[[str], None]


class EngineError(InfrastructureError):
    """The Docker engine or the base image cannot be had; the message says what is missing and the fix."""


def _say(message: str) -> None:
    print(f"[lightswe] {message}", file=sys.stderr, flush=True)


def recipe_hash(suite: str = _SUITE) -> str:
    """Content hash of the base-image recipe: suite, packages, post-install script and image settings."""
    text = "\n".join([suite, *_PACKAGES, _POST_INSTALL, *_CHANGES])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- the engine
def _ping(timeout: int = 5):
    import docker

    client = docker.from_env(timeout=timeout)
    client.ping()
    return client


def engine_problem() -> str | None:
    """None when an engine answers, else why not (for ``lightswe doctor``)."""
    try:
        _ping().close()
    except Exception as err:  # noqa: BLE001 - every failure means the same thing here
        return str(err).splitlines()[0][:200]
    return None


def ensure_engine(progress: Progress = _say, wait_s: float = 60.0):
    """Return a ``docker.DockerClient`` whose engine answers, starting one as root if needed."""
    try:
        import docker  # noqa: F401
    except ImportError:
        raise EngineError("the docker SDK is missing; fix: pip install 'docker>=7'") from None
    try:
        return _ping()
    except Exception as err:  # noqa: BLE001
        first_error = err
    if os.geteuid() != 0:
        raise EngineError(
            f"no Docker engine answers ({first_error}) and we are not root, so lightswe cannot start one; "
            "fix: start dockerd (e.g. `sudo systemctl start docker`) and make its socket usable by this user "
            "(`sudo usermod -aG docker $USER`), or set DOCKER_HOST"
        )
    if not shutil.which("dockerd"):
        progress("dockerd is missing: apt-get install -y docker.io")
        _apt_install("docker.io")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log = CACHE_DIR / "dockerd.log"
    progress(f"starting dockerd in the background (log: {log})")
    with open(log, "ab") as handle:
        subprocess.Popen(["dockerd"], stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            return _ping()
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise EngineError(f"dockerd did not answer within {wait_s:.0f} s; its log ({log}) ends with:\n{tail}")


def _apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not shutil.which("apt-get"):
        raise EngineError(f"cannot install {packages}: apt-get is missing (not a Debian/Ubuntu machine); "
                          "install them with this system's package manager")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], check=True, env=env,
                   stdout=subprocess.DEVNULL)


# ----------------------------------------------------------------------------------------- the base image
def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 ``URIs:`` or a sources.list line), never a guess."""
    sources = Path("/etc/apt/sources.list.d")
    for path in [sources / "debian.sources", *sorted(sources.glob("*.sources"))]:
        if path.is_file():
            for stanza in path.read_text().split("\n\n"):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
                if uris and suites and any(s in ("bookworm", "stable") for s in suites.group(1).split()):
                    return uris.group(1).rstrip("/")
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if path.is_file():
            match = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s", path.read_text(), re.M)
            if match:
                return match.group(1)
    raise EngineError("no Debian mirror found in /etc/apt/sources.list(.d); fix: set LIGHTSWE_DEBIAN_MIRROR "
                      "to a mirror URL, or name a ready image in LIGHTSWE_BASE_IMAGE")


def base_image_problem(client=None, suite: str = _SUITE) -> str | None:
    """None when the base image is present and current, else what is wrong (for ``lightswe doctor``)."""
    import docker

    client = client or _ping()
    tag = f"lightswe/base:{suite}"
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return f"{tag} is missing"
    if os.environ.get("LIGHTSWE_BASE_IMAGE") and suite == _SUITE:
        return None
    found = (image.labels or {}).get(RECIPE_LABEL)
    if found != recipe_hash(suite):
        return f"{tag} was built from another recipe ({found} != {recipe_hash(suite)})"
    return None


def ensure_base_image(client=None, progress: Progress = _say, force: bool = False, suite: str = _SUITE) -> str:
    """Return ``BASE_IMAGE``, pulling ``LIGHTSWE_BASE_IMAGE`` or building it with debootstrap when absent.

    ``suite``: another Debian release of ``PYTHON_SUITES`` builds ``lightswe/base:<suite>`` the same way
    (debootstrap once, cached by recipe hash; a few minutes).
    """
    client = client or ensure_engine(progress)
    if suite != _SUITE:
        if force or base_image_problem(client, suite) is not None:
            _build_base_image(client, progress, suite)
        return f"lightswe/base:{suite}"
    named = os.environ.get("LIGHTSWE_BASE_IMAGE")
    if named:
        progress(f"using the base image named in LIGHTSWE_BASE_IMAGE: {named}")
        try:
            image = client.images.get(named)
        except Exception:  # noqa: BLE001 - not local: pull it
            image = client.images.pull(named)
        _adopt(client, image, named)
        return BASE_IMAGE
    if not force and base_image_problem(client) is None:
        return BASE_IMAGE
    _build_base_image(client, progress)
    return BASE_IMAGE


def ensure_python_base(python_version: str, client=None, progress: Progress = _say) -> str:
    """A base image tag with Python ``python_version``: the one Debian release of it, or a named image.

    Order: ``LIGHTSWE_PYTHON_IMAGE_<major>_<minor>`` (any image with that python3 and git, e.g. from a
    registry; the ``agent`` user is added) -> the Debian release with that Python (``PYTHON_SUITES``, built
    once with debootstrap) -> ValueError listing the real options.
    """
    short = ".".join(python_version.strip().split(".")[:2])
    variable = "LIGHTSWE_PYTHON_IMAGE_" + short.replace(".", "_")
    named = os.environ.get(variable)
    suite = PYTHON_SUITES.get(short)
    if suite is None and not named:
        offered = ", ".join(f"{v} (Debian {s})" for v, s in PYTHON_SUITES.items())
        raise ValueError(f"no base image has Python {python_version}: this machine's Debian mirror offers Python "
                         f"{offered}; fix: set python_version to one of those, or name an image with Python {short}, "
                         f"python3 and git in {variable} (e.g. a registry's python:{short} image), or give the row "
                         "an image_name of a prebuilt environment")
    client = client or ensure_engine(progress)
    if named:
        target = f"lightswe/base:python{short}-named"
        try:
            image = client.images.get(named)
        except Exception:  # noqa: BLE001 - not local: pull it
            image = client.images.pull(named)
        found = client.containers.run(image.id, ["sh", "-c", "python3 -c 'import sys; print(\"%d.%d\" % "
                                                 "sys.version_info[:2])'"], remove=True,
                                      network_mode="none").decode().strip()
        if found != short:
            raise ValueError(f"{variable}={named} has Python {found or 'none'}, not {short}; fix: name an image "
                             f"whose python3 is {short}")
        _adopt(client, image, named, target=target)
        return target
    return ensure_base_image(client, progress, suite=suite)


def _adopt(client, image, named: str, target: str = BASE_IMAGE) -> None:
    """Tag a registry image as the base, adding the ``agent`` user and git settings if it lacks them."""
    check = "command -v python3 >/dev/null && command -v git >/dev/null && echo tools; id -u agent 2>/dev/null || true"
    found = client.containers.run(image.id, ["sh", "-c", check], remove=True, network_mode="none").decode().split()
    if "tools" not in found:
        raise EngineError(f"the image {named} (LIGHTSWE_BASE_IMAGE) lacks python3 or git; fix: name an image with "
                          "both (Debian bookworm with python3, python3-venv, python3-pip, git)")
    if str(AGENT_UID) in found:
        image.tag(target)
        return
    script = _POST_INSTALL.replace("apt-get clean\n", "")
    container = client.containers.run(image.id, ["sh", "-c", script], detach=True, network_mode="none",
                                      labels={"lightswe.build": "1"})
    try:
        if container.wait().get("StatusCode") != 0:
            raise EngineError(f"adding the agent user to {named} failed: {container.logs()[-500:]!r}")
        repository, tag = target.split(":")
        container.commit(repository=repository, tag=tag, changes=[f"LABEL {RECIPE_LABEL}=adopted:{named}"])
    finally:
        container.remove(force=True)


def _build_base_image(client, progress: Progress, suite: str = _SUITE) -> None:
    target = f"lightswe/base:{suite}"
    if os.geteuid() != 0:
        raise EngineError(f"{target} is missing and building it with debootstrap needs root; fix: run "
                          "`sudo python -m lightswe setup` once, or set LIGHTSWE_BASE_IMAGE to a registry image")
    if not shutil.which("debootstrap"):
        progress("debootstrap is missing: apt-get install -y debootstrap")
        _apt_install("debootstrap")
    mirror = os.environ.get("LIGHTSWE_DEBIAN_MIRROR") or debian_mirror()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=CACHE_DIR))
    root = work / "rootfs"
    log = CACHE_DIR / f"debootstrap-{suite}.log"
    try:
        progress(f"building {target}: debootstrap {suite} from {mirror} (a few minutes; log: {log})")
        with open(log, "wb") as handle:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(_PACKAGES)}", suite, str(root), mirror],
                stdout=handle, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise EngineError(f"debootstrap failed (exit {done.returncode}); see {log}: "
                              + log.read_text(errors="replace")[-800:])
        subprocess.run(["chroot", str(root), "/bin/sh", "-c", _POST_INSTALL], check=True)
        progress("importing the root file system into Docker")
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        changes = [*_CHANGES, f"LABEL {RECIPE_LABEL}={recipe_hash(suite)}"]
        repository, tag = target.split(":")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=tag, changes=changes)
        progress(f"{target} ready")
    finally:
        shutil.rmtree(work, ignore_errors=True)
