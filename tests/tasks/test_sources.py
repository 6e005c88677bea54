"""Sources: a PyPI sdist becomes a git repository with a reproducible root commit; git sources at a commit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lightswe.tasks import sources
from lightswe.tasks.instance import read_jsonl

# toolz 1.0.0's sdist committed with lightswe's fixed identity and date: the same hash on every machine.
TOOLZ_SDIST_COMMIT = "eedacdae239f1170ef04054d0c4f57862045c279"


@pytest.fixture(scope="module")
def toolz():
    return sources.sdist_repo("toolz", "1.0.0")


def test_sdist_commit_is_reproducible(toolz):
    assert toolz.commit == TOOLZ_SDIST_COMMIT
    log = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(toolz.path), "log", "--format=%an %ad %s",
                          "--date=iso", toolz.commit], capture_output=True, text=True, check=True).stdout
    assert log.strip() == "lightswe 2000-01-01 00:00:00 +0000 toolz 1.0.0 (PyPI source distribution)"
    files = sources.tree_files(toolz)
    assert "toolz/tests/test_itertoolz.py" in files and "toolz.egg-info/PKG-INFO" in files  # ignored files kept


def test_sha256_is_checked():
    with pytest.raises(sources.SourceError, match="sha256"):
        sources.download_sdist("toolz", "1.0.0", sha256="0" * 64)


def test_demo_base_is_replayed_from_the_fix(toolz):
    from lightswe.envs.swe_env import default_tasks_path

    demo = read_jsonl(default_tasks_path())[0]
    base = sources.base_repo(demo)
    assert base.commit == demo.base_commit
    assert b"islice(seq, n + 1, None)" in sources.read_blob(base, "toolz/itertoolz.py")
    again = sources.commit_patch(toolz, demo.patch, reverse=True)
    assert again.commit == demo.base_commit  # deterministic


def _origin_repo(tmp_path) -> tuple[Path, str, str]:
    """A real git repository with two commits of ``a.py`` (x = 1, then x = 2): (path, first, second)."""
    origin = tmp_path / "origin"
    origin.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(origin), *a], check=True, capture_output=True, text=True).stdout
    run("init", "-q")
    (origin / "a.py").write_text("x = 1\n")
    run("add", "a.py")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    first = run("rev-parse", "HEAD").strip()
    (origin / "a.py").write_text("x = 2\n")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    return origin, first, run("rev-parse", "HEAD").strip()


def test_git_source_at_a_commit(tmp_path):
    origin, first, _ = _origin_repo(tmp_path)
    repo = sources.git_repo(str(origin), first)
    assert repo.commit == first and sources.read_blob(repo, "a.py") == b"x = 1\n"
    with pytest.raises(sources.SourceError):
        sources.git_repo(str(origin), "f" * 40)


_BUILD_CONCURRENTLY = """
import sys
from concurrent.futures import ThreadPoolExecutor
from lightswe.tasks import sources
kind, arg = sys.argv[1], sys.argv[2]
build = (lambda _: sources.sdist_repo("toolz", "1.0.0")) if kind == "sdist" else \\
    (lambda _: sources.git_repo(arg, sys.argv[3]))
with ThreadPoolExecutor(3) as pool:
    print(" ".join(sorted({f"{r.path}@{r.commit}" for r in pool.map(build, range(3))})))
"""


def _race(tmp_path, *args: str) -> set[str]:
    """Two processes of three threads each build the same cache entry at once in an empty cache."""
    env = {**os.environ, "LIGHTSWE_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_CONCURRENTLY, *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    return {out.strip() for out, _ in results}


def test_concurrent_sdist_builds_share_one_cache_entry(tmp_path, toolz):
    # seed the new cache with the already downloaded archive: the race is about unpacking and committing
    archive = sources.download_sdist("toolz", "1.0.0")
    seeded = tmp_path / "cache" / "sdists" / archive.parent.name
    seeded.mkdir(parents=True)
    shutil.copy(archive, seeded / archive.name)
    made = _race(tmp_path, "sdist", "-")
    path = tmp_path / "cache" / "repos" / "pypi-toolz-1.0.0"
    assert made == {f"{path}@{TOOLZ_SDIST_COMMIT}"}
    assert sorted(p.name for p in (tmp_path / "cache" / "repos").iterdir()) == ["pypi-toolz-1.0.0"]
    assert not list((tmp_path / "cache").glob("unpack-*"))  # no half-made entry left behind


def test_concurrent_clones_share_one_cache_entry(tmp_path):
    origin, sha, _ = _origin_repo(tmp_path)
    [made] = _race(tmp_path, "git", str(origin), sha)
    assert made.endswith(f"@{sha}") and " " not in made
    assert [p.name for p in (tmp_path / "cache" / "git").iterdir() if not p.name.startswith("clone-")] == \
        [made.split("@")[0].rsplit("/", 1)[-1]]
    assert not list((tmp_path / "cache" / "git").glob("clone-*"))


def test_base_commit_made_after_the_clone_was_cached_is_fetched(tmp_path):
    from lightswe.tasks.instance import TaskInstance

    origin, first, second = _origin_repo(tmp_path)
    sources.git_repo(str(origin), first)  # cached before the third commit exists
    subprocess.run(["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "three"], check=True)
    third = subprocess.run(["git", "-C", str(origin), "rev-parse", "HEAD"], check=True, capture_output=True,
                           text=True).stdout.strip()
    task = TaskInstance(instance_id="o__r-1", repo="o/r", source=str(origin), base_commit=third,
                        environment_setup_commit=first, patch="", problem_statement="s", FAIL_TO_PASS=["t::a"],
                        PASS_TO_PASS=[])
    assert sources.base_repo(task).commit == third and second != third
