"""Where a task's code comes from: a PyPI source distribution or a git repository, as a local git repository.

A PyPI source distribution (``source="pypi:toolz==1.0.0"``) is downloaded once with
``pip download --no-deps --no-binary :all:`` into ``~/.cache/lightswe/sdists`` (sha256 checked when given),
unpacked, and committed as the single root commit of a git repository with a fixed author, committer, date
and message: the same sdist gives the same commit hash on every machine. Every file the sdist ships is
committed (``git add -f``), including what its ``.gitignore`` would hide (``*.egg-info``).

A git URL or local path (``source="https://..."``, ``"/path/to/repo"``; empty means
``https://github.com/{repo}``) is cloned once into ``~/.cache/lightswe/git`` and the commit is fetched.

Public API (used by ``tasks/images.py`` and the synthesizer)::

    repo = sdist_repo("toolz", "1.0.0")             # SourceRepo(path, commit): the sdist's root commit
    repo = git_repo("https://github.com/x/y", sha)  # SourceRepo(path, sha)
    repo = source_repo(instance)                    # either, from instance.source / instance.repo
    bug = commit_patch(repo, fix_patch, reverse=True, message="task base")  # deterministic child commit
    base = base_repo(instance)                      # SourceRepo at instance.base_commit (see below)
    data = archive(base)                            # tar bytes of the tree (for docker put_archive)

Concurrency: threads and processes that build the same task at once share the cache safely: every cache entry
is made under a per-entry ``fcntl.flock`` lock (``~/.cache/lightswe/locks``), built in a temporary folder and
moved into place with one atomic rename, so nobody ever sees (or clones into) a half-made repository.

``base_repo`` finds ``instance.base_commit`` in the source repository; where it is absent and the base is one
lightswe makes (a PyPI source, a synthesized task of a git source, a SWE-smith row) it replays how the base is
made: the source commit (the sdist's, or ``environment_setup_commit``) plus ``metadata["bug_patch"]`` when
given, else plus the *reverse* of the fix ``patch`` (a synthesized bug is the fix undone), committed
deterministically, and checks that the hash matches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lightswe.errors import InfrastructureError
from lightswe.tasks.instance import TaskInstance

CACHE_DIR = Path(os.environ.get("LIGHTSWE_CACHE", Path.home() / ".cache" / "lightswe"))
# Fixed identity and date: the same tree and parent give the same commit hash everywhere.
_IDENTITY = {
    "GIT_AUTHOR_NAME": "lightswe", "GIT_AUTHOR_EMAIL": "lightswe@localhost",
    "GIT_COMMITTER_NAME": "lightswe", "GIT_COMMITTER_EMAIL": "lightswe@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}


class SourceError(InfrastructureError):
    """A source cannot be fetched or does not hold the commit asked for; says which and the fix."""


@dataclass(kw_only=True, slots=True, frozen=True)
class SourceRepo:
    path: Path  # a local git repository (cache; do not edit its working tree)
    commit: str  # the commit of interest, present in that repository


@contextlib.contextmanager
def _locked(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache entry ``entry`` (threads and processes alike; not re-entrant)."""
    locks = CACHE_DIR / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{entry.parent.name}-{entry.name}.lock", "a") as handle:  # one open file per holder
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _git(path: Path, *args: str, input: bytes | None = None) -> str:
    env = {**os.environ, **_IDENTITY, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(CACHE_DIR)}
    done = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(path), *args], input=input, capture_output=True, env=env)
    if done.returncode != 0:
        raise SourceError(f"git {' '.join(args[:3])} failed in {path}: {_one_line(done.stderr)}; "
                          "fix: if the cached repository is damaged, delete that folder and it is fetched again")
    return done.stdout.decode(errors="replace").strip()


def _one_line(output: bytes | str, width: int = 600) -> str:
    """A command's output as one line (its lines joined by " | "), the end kept when longer than ``width``."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-width:]


def local_source(url: str) -> Path | None:
    """``url`` as an absolute local path (``~`` expanded, relative to the current directory), or None for a URL
    (``scheme://...``, scp-like ``user@host:path``)."""
    if "://" in url or re.match(r"^[\w.\-]+@[\w.\-]+:", url):
        return None
    return Path(url).expanduser().resolve()


def parse_pypi(source: str) -> tuple[str, str] | None:
    """``"pypi:toolz==1.0.0"`` -> ``("toolz", "1.0.0")``; None for other sources."""
    match = re.fullmatch(r"pypi:([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+!\-]+)", source.strip())
    return (match.group(1), match.group(2)) if match else None


def download_sdist(name: str, version: str, sha256: str | None = None) -> Path:
    """The sdist archive of ``name==version`` in the cache (downloaded once)."""
    folder = CACHE_DIR / "sdists" / f"{name.lower()}-{version}"
    with _locked(folder):
        archive_path = _download_locked(folder, name, version)
    if sha256:
        digest = hashlib.sha256(archive_path.read_bytes()).hexdigest()
        if digest != sha256.lower():
            raise SourceError(f"{archive_path.name}: sha256 {digest} != expected {sha256}; the cache or the "
                              f"index is not serving the expected file; fix: delete {folder} and retry")
    return archive_path


def _download_locked(folder: Path, name: str, version: str) -> Path:
    found = [p for p in folder.glob("*") if p.name.endswith((".tar.gz", ".zip", ".tar.bz2", ".tgz"))] \
        if folder.is_dir() else []
    if not found:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="dl-", dir=CACHE_DIR))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(tmp),
               f"{name}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SourceError(f"pip download of the {name}=={version} sdist failed: {done.stderr[-800:]}; fix: check "
                              "the name and version on PyPI and that PyPI is reachable")
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        found = list(folder.glob("*"))
    return found[0]


def sdist_repo(name: str, version: str, sha256: str | None = None) -> SourceRepo:
    """A git repository whose single root commit is the sdist of ``name==version`` (deterministic hash)."""
    path = CACHE_DIR / "repos" / f"pypi-{name.lower()}-{version}"
    with _locked(path):
        if (path / ".git").is_dir():
            try:
                return SourceRepo(path=path, commit=_git(path, "rev-list", "--max-parents=0", "-n1", "sdist"))
            except SourceError:
                shutil.rmtree(path)  # a broken entry (made before the lock existed): rebuild it
        archive_path = download_sdist(name, version, sha256)
        tmp = Path(tempfile.mkdtemp(prefix="unpack-", dir=CACHE_DIR))
        try:
            shutil.unpack_archive(str(archive_path), str(tmp))
            entries = list(tmp.iterdir())
            top = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
            _git(top, "init", "-q", "-b", "sdist")
            _git(top, "add", "-A", "-f")
            _git(top, "commit", "-q", "--no-verify", "-m", f"{name} {version} (PyPI source distribution)")
            path.parent.mkdir(parents=True, exist_ok=True)
            top.rename(path)  # atomic: the entry appears complete or not at all
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return SourceRepo(path=path, commit=_git(path, "rev-parse", "HEAD"))


def git_repo(url: str, commit: str) -> SourceRepo:
    """A cached clone of ``url`` (URL or local path) that holds ``commit``.

    A local path is taken as an absolute path (so the same text in two folders is two sources) and must be a
    git repository. Raises SourceError (one line: the source, what is wrong, the fix) when the clone fails or
    the commit is not in the source even after a fetch.
    """
    local = local_source(url)
    if local is not None:
        if not local.is_dir():
            raise SourceError(f"source {url}: no such directory; fix: point the row's \"source\" at a git "
                              "clone or mirror of the repository (git clone --mirror URL PATH), or leave it out "
                              "for https://github.com/<repo>")
        inside = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(local), "rev-parse", "--git-dir"],
                                capture_output=True, text=True)
        if inside.returncode != 0:
            raise SourceError(f"source {url}: not a git repository ({_one_line(inside.stderr, 200)}); fix: point "
                              "the row's \"source\" at a git clone or mirror of the repository (git clone "
                              "--mirror URL PATH)")
        url = str(local)
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    path = CACHE_DIR / "git" / f"{Path(url.rstrip('/')).name.removesuffix('.git')}-{key}"
    with _locked(path):
        if not (path / ".git").is_dir() and not (path / "HEAD").is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix="clone-", dir=path.parent))
            try:
                done = subprocess.run(["git", "clone", "-q", "--no-checkout", url, str(tmp / "repo")],
                                      check=False, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SourceError(f"git clone {url} failed: {_one_line(done.stderr)}; fix: check the URL "
                                      "and the network, or clone it where it is reachable and give that path as "
                                      "the row's \"source\"")
                shutil.rmtree(path, ignore_errors=True)  # a partial clone left by a crash before the lock existed
                (tmp / "repo").rename(path)  # atomic: the clone appears complete or not at all
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        try:
            return SourceRepo(path=path, commit=_git(path, "rev-parse", "--verify", f"{commit}^{{commit}}"))
        except SourceError:
            pass
        try:
            _git(path, "fetch", "-q", "origin", commit)
            return SourceRepo(path=path, commit=_git(path, "rev-parse", "--verify", f"{commit}^{{commit}}"))
        except SourceError as err:
            raise SourceError(f"commit {commit!r} is not in {url} ({str(err).partition(': ')[2].partition('; fix:')[0][:300]}); fix: check "
                              "the row's base_commit and environment_setup_commit against that repository, or "
                              "bring the repository up to date (git fetch in it)") from None


def source_repo(instance: TaskInstance, commit: str | None = None) -> SourceRepo:
    """The instance's source: the sdist root commit, or the git repository at ``commit`` (default base)."""
    pypi = parse_pypi(instance.source)
    if pypi:
        return sdist_repo(*pypi, sha256=instance.metadata.get("sdist_sha256"))
    url = instance.source or f"https://github.com/{instance.repo}"
    return git_repo(url, commit or instance.environment_setup_commit or instance.base_commit)


def commit_patch(repo: SourceRepo, patch: str, *, reverse: bool = False, message: str = "lightswe task base") -> SourceRepo:
    """Apply ``patch`` (unified diff) on ``repo.commit`` and commit it deterministically; the child commit."""
    with _locked(repo.path):  # one writer of the cached repository's worktrees and objects at a time
        return _commit_patch_locked(repo, patch, reverse=reverse, message=message)


def _commit_patch_locked(repo: SourceRepo, patch: str, *, reverse: bool, message: str) -> SourceRepo:
    work = Path(tempfile.mkdtemp(prefix="wt-", dir=CACHE_DIR))
    try:
        _git(repo.path, "worktree", "add", "-q", "--detach", str(work), repo.commit)
        args = ["apply", "--whitespace=nowarn"] + (["-R"] if reverse else [])
        try:
            _git(work, *args, "-", input=patch.encode())
        except SourceError as err:
            raise SourceError(f"the patch does not apply {'in reverse ' if reverse else ''}on {repo.commit[:12]}: "
                              f"{err}") from None
        _git(work, "add", "-A", "-f")
        _git(work, "commit", "-q", "--no-verify", "-m", message)
        return SourceRepo(path=repo.path, commit=_git(work, "rev-parse", "HEAD"))
    finally:
        _git(repo.path, "worktree", "remove", "--force", str(work))
        shutil.rmtree(work, ignore_errors=True)


def has_commit(repo: SourceRepo, commit: str) -> bool:
    try:
        _git(repo.path, "cat-file", "-e", f"{commit}^{{commit}}")
    except SourceError:
        return False
    return True


def base_repo(instance: TaskInstance) -> SourceRepo:
    """The source repository positioned at ``instance.base_commit`` (replayed for PyPI sources, see above)."""
    root, missing = source_repo(instance), None
    # made by replaying: the synthesizer's bases (source commit + reversed fix), SWE-smith's (+ bug_patch)
    replayed = bool(parse_pypi(instance.source) or instance.metadata.get("synthesized")
                    or instance.metadata.get("bug_patch"))
    if instance.base_commit and not has_commit(root, instance.base_commit) and not parse_pypi(instance.source):
        try:  # a cached clone made before the base commit existed upstream: fetch it
            root = source_repo(instance, commit=instance.base_commit)
        except SourceError as err:
            missing = err  # names the source and the fix
    if instance.base_commit and has_commit(root, instance.base_commit):
        return SourceRepo(path=root.path, commit=_git(root.path, "rev-parse", instance.base_commit))
    if replayed:
        bug = instance.metadata.get("bug_patch")
        made = commit_patch(root, bug, reverse=False) if bug else commit_patch(root, instance.patch, reverse=True)
        if made.commit == instance.base_commit or not re.fullmatch(r"[0-9a-f]{40}", instance.base_commit):
            return made
        raise SourceError(f"{instance.instance_id}: replaying the base gave {made.commit}, but the task says "
                          f"base_commit {instance.base_commit}; fix: rebuild the task (its patch or sdist changed)")
    if missing is not None:
        raise SourceError(f"{instance.instance_id}: {missing}")
    raise SourceError(f"{instance.instance_id}: commit {instance.base_commit} is not in {root.path}; fix: check "
                      "the task's base_commit and source (a commit of that repository, or the sdist's replayed base)")


def archive(repo: SourceRepo, commit: str | None = None) -> bytes:
    """A tar archive of the tree at ``commit`` (default ``repo.commit``), paths relative to the repo root."""
    done = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo.path), "archive", "--format=tar", commit or repo.commit],
                          capture_output=True)
    if done.returncode != 0:
        raise SourceError(f"git archive of {repo.path} failed: {done.stderr.decode(errors='replace')[-400:]}; fix: if "
                          "the cached repository is damaged, delete that folder and it is fetched again")
    return done.stdout


def tree_files(repo: SourceRepo, commit: str | None = None) -> list[str]:
    """Paths of the files tracked at ``commit``."""
    out = _git(repo.path, "ls-tree", "-r", "--name-only", "-z", commit or repo.commit)
    return [p for p in out.split("\0") if p]


def read_blob(repo: SourceRepo, path: str, commit: str | None = None) -> bytes:
    """The bytes of ``path`` at ``commit``."""
    done = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo.path), "show", f"{commit or repo.commit}:{path}"], capture_output=True)
    if done.returncode != 0:
        raise SourceError(f"{path} is not in {commit or repo.commit}: {done.stderr.decode(errors='replace')[-200:]}")
    return done.stdout
