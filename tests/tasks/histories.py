"""Repositories with real history, made offline from consecutive PyPI releases with an upstream fix between.

Each is deterministic (fixed identities and dates), cached under ``~/.cache/lightswe/test-repos``, and laid out
as a git checkout of the project would be: no ``PKG-INFO``, no ``*.egg-info``, no generated ``_version.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile

from lightswe.tasks import sources

SHA = {("toolz", "1.1.0"): "27a5c770d068c110d9ed9323f24f1543e83b2f300a687b7891c1a6d56b697b5b",
       ("toolz", "1.2.0"): "9667a038e9d6ecba37995e26cb2f59ec6420b6ad8dd9677de59db9b956b08490",
       ("pytest", "5.4.1"): "84dde37075b8805f3d1f392cc47e38a0e59518fb46a431cfdaf7cf1ce805f970",
       ("pytest", "5.4.2"): "eb2b5e935f6a019317e455b6da83dd8650ac9ffd2ee73a7b657a30873d67a698",
       ("django", "5.0.1"): "8c8659665bc6e3a44fefe1ab0a291e5a3fb3979f9a8230be29de975e57e8f854",
       ("django", "5.0.2"): "b5bb1d11b2518a5f91372a282f24662f58f66749666b0a286ab057029f728080"}
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "toolz", "GIT_AUTHOR_EMAIL": "toolz@localhost",
           "GIT_COMMITTER_NAME": "toolz", "GIT_COMMITTER_EMAIL": "toolz@localhost",
           "GIT_AUTHOR_DATE": "2025-10-17T00:00:00+0000", "GIT_COMMITTER_DATE": "2025-10-17T00:00:00+0000"}
TEST = "toolz/tests/test_itertoolz.py"


def git(repo, *args: str) -> str:
    """stdout of git, unstripped (a diff's last context line may be a lone space)."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=GIT_ENV).stdout


def one_commit_repo(repo, files: dict[str, str], message: str = "first") -> str:
    """Make ``repo`` a git repository whose one commit holds ``files`` (path -> text); its hash."""
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def unpack(name: str, version: str, into):
    with tarfile.open(sources.download_sdist(name, version, SHA[(name, version)])) as archive:
        archive.extractall(into, filter="data")
    found = [p for p in into.iterdir() if p.name.lower() == f"{name}-{version}".lower()]
    return found[0]


def _older_release_repo(repo, work, name: str, title: str, old_version: str, new_version: str, clean=None):
    """Unpack two releases of ``name`` into ``work`` and make ``repo`` a git repository whose one commit
    (``"<title> <old_version>"``) is the older tree; ``clean`` is applied to both trees first. Returns
    (older tree, newer tree)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    old, new = unpack(name, old_version, work), unpack(name, new_version, work)
    for tree in (old, new) if clean else ():
        clean(tree)
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(old, repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A", "-f")
    git(repo, "commit", "-q", "-m", f"{title} {old_version}")
    return old, new


def _commit_files_of(repo, tree, paths, message: str) -> None:
    """Copy ``paths`` from ``tree`` (a newer release) into ``repo`` and commit them as one commit."""
    for path in paths:
        shutil.copy(tree / path, repo / path)
    git(repo, "commit", "-q", "-am", message)


def toolz_history():
    """(path, base, fix, tests) of toolz 1.1.0 + the upstream fix of interpose on an empty sequence (1.2.0)."""
    repo = sources.CACHE_DIR / "test-repos" / "toolz-interpose"
    if not (repo / ".git").is_dir():
        work = sources.CACHE_DIR / "test-repos" / "unpack"
        _, new = _older_release_repo(repo, work, "toolz", "toolz", "1.1.0", "1.2.0")
        _commit_files_of(repo, new, ["toolz/itertoolz.py"], "Fix interpose on an empty sequence (from toolz 1.2.0)")
        text = (repo / TEST).read_text()
        anchor = "\n\ndef test_frequencies():"
        assert anchor in text
        test = '\n\ndef test_interpose_empty():\n    assert list(interpose("a", [])) == []\n'
        (repo / TEST).write_text(text.replace(anchor, test + anchor, 1))
        git(repo, "commit", "-q", "-am", "Test interpose on an empty sequence (from toolz 1.2.0)")
        shutil.rmtree(work, ignore_errors=True)
    base, fix, tests = (git(repo, "rev-parse", f"HEAD~{n}").strip() for n in (2, 1, 0))
    return repo, base, fix, tests


PYTEST_TEST = "testing/io/test_saferepr.py"


def _checkout_like(tree) -> None:
    """Drop what an sdist adds to a checkout: PKG-INFO, *.egg-info, setuptools-scm's generated _version.py."""
    (tree / "PKG-INFO").unlink(missing_ok=True)
    for info in tree.rglob("*.egg-info"):
        shutil.rmtree(info)
    (tree / "src/_pytest/_version.py").unlink(missing_ok=True)


def pytest_history():
    """(path, base, fix, tests, env) of pytest 5.4.1 + the upstream fix of #7145 (saferepr of classes with a
    broken ``__getattribute__``, shipped in 5.4.2), its test, and 5.4.2's whole tree as the later
    ``environment_setup_commit`` (new files, a later version: what must not reach the agent's tree)."""
    repo = sources.CACHE_DIR / "test-repos" / "pytest-saferepr"
    if not (repo / ".git").is_dir():
        work = sources.CACHE_DIR / "test-repos" / "unpack-pytest"
        _, new = _older_release_repo(repo, work, "pytest", "pytest", "5.4.1", "5.4.2", clean=_checkout_like)
        _commit_files_of(repo, new, ["src/_pytest/_io/saferepr.py"],
                         "Fix saferepr of classes with a broken __getattribute__ (#7145)")
        _commit_files_of(repo, new, [PYTEST_TEST], "Test saferepr with a broken __getattribute__ (#7145)")
        shutil.rmtree(repo / "src")
        shutil.rmtree(repo / "testing")
        shutil.rmtree(repo / "doc")
        for path in ("src", "testing", "doc"):
            shutil.copytree(new / path, repo / path)
        for path in ("setup.cfg", "tox.ini"):
            shutil.copy(new / path, repo / path)
        git(repo, "add", "-A", "-f")
        git(repo, "commit", "-q", "-m", "pytest 5.4.2 (the version's last commit)")
        shutil.rmtree(work, ignore_errors=True)
    base, fix, tests, env = (git(repo, "rev-parse", f"HEAD~{n}").strip() for n in (3, 2, 1, 0))
    return repo, base, fix, tests, env


DJANGO_FIX = "django/core/management/commands/dumpdata.py"


def django_history():
    """(path, base, fix, tests) of Django 5.0.1 + the upstream fix of ticket #35159 shipped in 5.0.2 (dumpdata
    crashed when a base queryset used prefetch_related()) and its test (tests/fixtures)."""
    repo = sources.CACHE_DIR / "test-repos" / "django-35159"
    if not (repo / ".git").is_dir():
        work = sources.CACHE_DIR / "test-repos" / "unpack-django"
        _, new = _older_release_repo(repo, work, "django", "Django", "5.0.1", "5.0.2", clean=_checkout_like)
        _commit_files_of(repo, new, [DJANGO_FIX],
                         "Fixed #35159 -- Fixed dumpdata crash when base querysets use prefetch_related().")
        _commit_files_of(repo, new, ["tests/fixtures/tests.py", "tests/fixtures/models.py"],
                         "Refs #35159 -- Test dumpdata with prefetch_related() in a base manager.")
        shutil.rmtree(work, ignore_errors=True)
    base, fix, tests = (git(repo, "rev-parse", f"HEAD~{n}").strip() for n in (2, 1, 0))
    return repo, base, fix, tests
