"""The Docker engine and the base image every sandbox starts from.

``ensure_engine()`` returns a client whose engine answers. The engine is found as the ``docker`` CLI finds it
(``DOCKER_HOST``, then ``DOCKER_CONTEXT`` / the current Docker context, then the local socket). When none answers
where the user pointed, it says ``no engine at X; fix: ...`` within seconds and never starts one; only for the
default local socket and as root does it install Debian's ``docker.io`` (if ``dockerd`` is missing), start
``dockerd`` in the background (log in ``~/.cache/lightswe/dockerd.log``) and wait.

``ensure_base_image()`` returns the base image tag (``lightswe/base:bookworm``). A user with a registry names
an image in ``LIGHTSWE_BASE_IMAGE`` and it is pulled; otherwise the image is built offline-friendly:
``debootstrap --variant=minbase`` of Debian bookworm (python3, venv, pip, git) from the mirror this machine's
apt already uses, then ``docker import``. The image carries a label with a hash of the recipe below, so a
second run finds it and returns in well under a second; changing the recipe rebuilds.

Inside the image: a non-root user ``agent`` (uid 1000) for the agent's commands, ``python`` on PATH, pip
allowed to install into the system Python (PEP 668 marker removed: the image is single-purpose), and git's
``safe.directory = *`` (sdist files belong to another uid; root runs git while images are *built*). The images
agents run in (instance images, ``tasks/images.py``) drop that setting and every setuid/setgid bit: there
root never trusts the agent's repository. (Dropping it here would change the recipe hash and so rebuild every
environment image; the instance layer is where it matters.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightswe.errors import InfrastructureError, UserInputError

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
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
PING_TIMEOUT_S = 3.0  # an engine that answers does so in milliseconds; a missing one must be said fast


@dataclass(frozen=True, slots=True)
class EngineAddress:
    """Where the Docker engine is, resolved as the ``docker`` CLI does (see :func:`engine_address`).

    ``chosen`` is True when the user pointed at this engine (``DOCKER_HOST`` or a Docker context other than
    ``default``): lightswe then never starts an engine of its own, it says that none answers there."""

    url: str  # e.g. unix:///var/run/docker.sock, tcp://10.0.0.2:2376, ssh://user@host
    source: str  # "DOCKER_HOST", "docker context 'NAME'" or "the default socket"
    chosen: bool
    tls: Any = None  # a docker.tls.TLSConfig (context endpoints with TLS material) or None

    def client(self, timeout: float = PING_TIMEOUT_S):
        """A ``docker.DockerClient`` for this address (negotiates the API version: one request)."""
        import docker

        if self.source == "DOCKER_HOST":  # DOCKER_TLS_VERIFY / DOCKER_CERT_PATH apply as in the CLI
            return docker.from_env(timeout=timeout)
        kwargs = {"tls": self.tls} if self.tls is not None else {}
        use_ssh = self.url.startswith("ssh://")
        return docker.DockerClient(base_url=self.url, timeout=timeout, use_ssh_client=use_ssh, **kwargs)


def _docker_config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def engine_address() -> EngineAddress:
    """The engine the ``docker`` CLI would use: ``DOCKER_HOST``; else the context named by ``DOCKER_CONTEXT``
    or by ``currentContext`` in ``$DOCKER_CONFIG/config.json`` (default ``~/.docker``); else the local socket.

    Raises :class:`EngineError` for a context that does not exist or has no Docker endpoint (the CLI refuses
    those too). Source of the rules: docker/cli ``cli/command/cli.go`` (``resolveContextName``) and the context
    store layout ``contexts/meta/<sha256(name)>/meta.json``, ``contexts/tls/<sha256(name)>/docker/``."""
    host = os.environ.get("DOCKER_HOST", "").strip()
    if host:
        return EngineAddress(url=host, source="DOCKER_HOST", chosen=True)
    config_dir = _docker_config_dir()
    name = os.environ.get("DOCKER_CONTEXT", "").strip()
    where = "DOCKER_CONTEXT"
    if not name:
        where = f"currentContext in {config_dir / 'config.json'}"
        try:
            name = json.loads((config_dir / "config.json").read_text()).get("currentContext") or ""
        except (OSError, ValueError):
            name = ""
    if not name or name == "default":
        return EngineAddress(url=DEFAULT_SOCKET, source="the default socket", chosen=False)
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta_file = config_dir / "contexts" / "meta" / digest / "meta.json"
    try:
        endpoint = json.loads(meta_file.read_text())["Endpoints"]["docker"]
        url = endpoint["Host"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EngineError(f"the Docker context {name!r} ({where}) cannot be read from {meta_file} ({err!r}); fix: "
                          "`docker context ls` and `docker context use NAME`, or set DOCKER_HOST") from None
    tls = None
    tls_dir = config_dir / "contexts" / "tls" / digest / "docker"
    if tls_dir.is_dir():
        from docker.tls import TLSConfig

        cert, key, ca = tls_dir / "cert.pem", tls_dir / "key.pem", tls_dir / "ca.pem"
        tls = TLSConfig(client_cert=(str(cert), str(key)) if cert.is_file() and key.is_file() else None,
                        ca_cert=str(ca) if ca.is_file() else None, verify=not endpoint.get("SkipTLSVerify", False))
    return EngineAddress(url=url, source=f"docker context {name!r}", chosen=True, tls=tls)


def _ping(timeout: float = PING_TIMEOUT_S, address: EngineAddress | None = None):
    client = (address or engine_address()).client(timeout)
    try:
        client.ping()
    except BaseException:
        client.close()
        raise
    return client


def _reason(err: BaseException) -> str:
    """The innermost cause of a connection failure, one line (requests wraps it two or three times)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return re.sub(r"^.*?\)\)?: ", "", text)[:200]


def _no_engine(address: EngineAddress, err: BaseException) -> str:
    if address.source == "DOCKER_HOST":
        fix = ("start the engine there, or point DOCKER_HOST at one that runs (`docker context ls`), or unset "
               "DOCKER_HOST to use the local engine")
    elif address.chosen:
        fix = ("start the engine of that context, or `docker context use default` (or another from "
               "`docker context ls`)")
    elif os.geteuid() == 0:
        fix = "start dockerd (`python -m lightswe setup` does), or set DOCKER_HOST to an engine that runs"
    else:
        fix = ("start dockerd (e.g. `sudo systemctl start docker`) and make its socket usable by this user "
               "(`sudo usermod -aG docker $USER`), or set DOCKER_HOST")
    return f"no engine at {address.url} ({address.source}: {_reason(err)}); fix: {fix}"


def engine_problem() -> str | None:
    """None when an engine answers, else ``"no engine at X (...); fix: ..."`` (for ``lightswe doctor``)."""
    try:
        address = engine_address()
    except EngineError as err:
        return str(err)
    try:
        _ping(address=address).close()
    except Exception as err:  # noqa: BLE001 - every failure means the same thing here
        return _no_engine(address, err)
    return None


def _dockerd_running() -> bool:
    """Whether a local dockerd process exists (it may still be starting): never start a second one."""
    for pidfile in (Path("/var/run/docker.pid"), Path("/run/docker.pid")):
        try:
            os.kill(int(pidfile.read_text().strip()), 0)
            return True
        except (OSError, ValueError):
            continue
    return False


def ensure_engine(progress: Progress = _say, wait_s: float = 60.0):
    """Return a ``docker.DockerClient`` whose engine answers.

    The engine is the one :func:`engine_address` names. When none answers there: if the user chose it
    (``DOCKER_HOST`` or a Docker context) or we are not root, raise :class:`EngineError` (``"no engine at X
    (...); fix: ..."``) at once, within :data:`PING_TIMEOUT_S`; only for the default local socket, as root, is
    ``dockerd`` started (installed from Debian's ``docker.io`` if missing; log in ``~/.cache/lightswe``), and
    only when no dockerd runs already (then we wait for it)."""
    try:
        import docker  # noqa: F401
    except ImportError:
        raise EngineError("the docker SDK is missing; fix: pip install 'docker>=7'") from None
    address = engine_address()
    try:
        return _ping(address=address)
    except Exception as err:  # noqa: BLE001
        first_error = err
    if address.chosen or address.url != DEFAULT_SOCKET or os.geteuid() != 0:
        raise EngineError(_no_engine(address, first_error)) from None
    log = CACHE_DIR / "dockerd.log"
    if _dockerd_running():
        progress(f"dockerd runs but {address.url} does not answer yet; waiting up to {wait_s:.0f} s")
    else:
        if not shutil.which("dockerd"):
            progress("dockerd is missing: apt-get install -y docker.io")
            _apt_install("docker.io")
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        progress(f"starting dockerd in the background (log: {log})")
        with open(log, "ab") as handle:
            subprocess.Popen(["dockerd"], stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            return _ping(address=address)
        except Exception as err:  # noqa: BLE001
            first_error = err
            time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:]) if log.exists() else ""
    raise EngineError(f"{_no_engine(address, first_error)}\n(dockerd did not answer within {wait_s:.0f} s; "
                      f"the last lines of {log}:)\n{tail}")


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
            try:
                image = client.images.pull(named)
            except Exception as err:  # noqa: BLE001 - no registry here, no such image, no access
                raise UserInputError(f"LIGHTSWE_BASE_IMAGE={named}: not on this machine and not pulled "
                                     f"({str(err).splitlines()[0][:200]}); fix: `docker load` it or name a local "
                                     "image, or unset LIGHTSWE_BASE_IMAGE to build the base with debootstrap") from None
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
        raise UserInputError(f"no base image has Python {python_version}: this machine's Debian mirror offers Python "
                         f"{offered}; fix: set python_version to one of those, or name an image with Python {short}, "
                         f"python3 and git in {variable} (e.g. a registry's python:{short} image), or give the row "
                         "an image_name of a prebuilt environment")
    client = client or ensure_engine(progress)
    if named:
        target = f"lightswe/base:python{short}-named"
        try:
            image = client.images.get(named)
        except Exception:  # noqa: BLE001 - not local: pull it
            try:
                image = client.images.pull(named)
            except Exception as err:  # noqa: BLE001 - no registry here, no such image, no access
                raise UserInputError(f"{variable}={named}: not on this machine and not pulled "
                                     f"({str(err).splitlines()[0][:200]}); fix: `docker load` it or name a local "
                                     f"image, or unset {variable} to use the Debian release with Python {short} "
                                     "where there is one") from None
        found = client.containers.run(image.id, ["sh", "-c", "python3 -c 'import sys; print(\"%d.%d\" % "
                                                 "sys.version_info[:2])'"], remove=True,
                                      network_mode="none").decode().strip()
        if found != short:
            raise UserInputError(f"{variable}={named} has Python {found or 'none'}, not {short}; fix: name an image "
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
