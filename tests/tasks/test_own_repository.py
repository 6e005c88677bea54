"""Synthesizing tasks from one's own git repository (a pool file entry ``{name, git, commit}``), as a researcher
would: the entry's checks, the base of a synthesized task replayed from the git source on a machine that never
saw it, a pool of one repository that still has a training split, the report's splits from the build's own
pool, and (slow) the whole build + validation from a local mirror."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightswe.errors import UserInputError
from lightswe.tasks import sources, splits
from lightswe.tasks.instance import TaskInstance

from .histories import git, one_commit_repo, toolz_history


@pytest.fixture
def own_repo(tmp_path):
    """A small real repository with a function and its test: (path, commit)."""
    repo = tmp_path / "mylib"
    return repo, one_commit_repo(repo, {
        "mylib/__init__.py": "def clamp(x, low, high):\n    return max(low, min(x, high))\n",
        "tests/test_clamp.py": "from mylib import clamp\n\n\ndef test_clamp():\n    assert clamp(5, 0, 3) == 3\n"})


def test_a_git_entry_of_a_pool_file(own_repo, tmp_path):
    from lightswe.tasks.pool import load_pool

    repo, commit = own_repo
    (tmp_path / "pools").mkdir()
    pool_file = tmp_path / "pools" / "pool.json"
    pool_file.write_text(json.dumps({"repositories": [{"name": "mylib", "git": "../mylib", "commit": commit,
                                                       "tests": ["tests"], "src": ["mylib"]}]}))
    [spec] = load_pool(pool_file).values()
    assert (spec.git, spec.version, spec.repo, spec.source) == (str(repo), commit[:12], "git/mylib", str(repo))
    assert spec.source_repo().commit == commit and spec.is_source_file("mylib/__init__.py")
    fields = spec.instance_fields()
    assert fields["source"] == str(repo) and fields["repo"] == "git/mylib"
    for entry, says in (({"name": "mylib", "git": "../mylib"}, "'commit' must be a non-empty string"),
                        ({"name": "mylib", "git": "../mylib", "commit": commit, "sha256": "0" * 64},
                         "both 'git' and 'sha256'"),
                        ({"name": "mylib", "version": "1.0"}, "'sha256' must be a non-empty string, got None; fix:")):
        pool_file.write_text(json.dumps({"repositories": [entry]}))
        with pytest.raises(UserInputError, match=says):
            load_pool(pool_file)
    listed = subprocess.run([sys.executable, "-m", "lightswe", "tasks", "pool", "--pool-file", str(pool_file)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 2 and len(listed.stderr.strip().splitlines()) == 1, listed.stderr


def test_the_base_of_a_synthesized_task_is_replayed_from_the_git_source(own_repo, tmp_path, monkeypatch):
    """The base (source commit + the bug) lives in the builder's cache only; a fresh cache remakes it."""
    repo, commit = own_repo
    fix = ("diff --git a/mylib/__init__.py b/mylib/__init__.py\n--- a/mylib/__init__.py\n+++ b/mylib/__init__.py\n"
           "@@ -1,2 +1,2 @@\n def clamp(x, low, high):\n-    return max(low, max(x, high))\n"
           "+    return max(low, min(x, high))\n")
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "builder")
    made = sources.commit_patch(sources.git_repo(str(repo), commit), fix, reverse=True, message="lightswe task base")
    task = TaskInstance(instance_id="mylib-clamp", repo="git/mylib", source=str(repo), base_commit=made.commit,
                        environment_setup_commit=commit, patch=fix, problem_statement="clamp ignores high",
                        FAIL_TO_PASS=["tests/test_clamp.py::test_clamp"], metadata={"synthesized": True})
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "another-machine")
    base = sources.base_repo(task)
    assert base.commit == made.commit
    assert b"max(x, high)" in sources.read_blob(base, "mylib/__init__.py")
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "a-third-machine")
    task.patch = fix.replace("max(x, high)", "max(x,  high)")  # a fix that does not give the recorded base
    with pytest.raises(sources.SourceError, match="does not apply|replaying the base gave"):
        sources.base_repo(task)


def test_a_pool_of_one_repository_keeps_it_for_training():
    assert splits.held_out_repos(["git/mylib"]) == set()
    assert len(splits.held_out_repos(["git/a", "git/b"])) == 1
    assert len(splits.held_out_repos([f"pypi/lib{i}" for i in range(14)])) == 2  # the shipped pool: as before


def test_the_report_splits_by_the_build_s_own_pool(own_repo, tmp_path, monkeypatch):
    from lightswe.settings import write_config
    from lightswe.tasks.build import INSTANCES, BuildConfig, built_pool, write_report

    repo, commit = own_repo
    pool_file = tmp_path / "pool.json"
    pool_file.write_text(json.dumps({"repositories": [{"name": "mylib", "git": str(repo), "commit": commit,
                                                       "src": ["mylib"]}]}))
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    config = BuildConfig(out=out, pool_file=Path("pool.json"))  # stored absolute: found from any folder
    assert config.pool_file == pool_file
    write_config(out, config, command="tasks build")
    task = TaskInstance(instance_id="mylib-1", repo="git/mylib", base_commit=commit, patch="", source=str(repo),
                        problem_statement="s", FAIL_TO_PASS=["tests/test_clamp.py::test_clamp"],
                        metadata={"file": "mylib/__init__.py", "function": "clamp"})
    (out / INSTANCES).write_text(json.dumps(task.to_dict()) + "\n")
    assert list(built_pool(out)) == ["mylib"]
    report = write_report(out)
    assert report["held_out_repos"] == [] and report["splits"]["test_repo"] == 0
    pool_file.unlink()
    with pytest.raises(UserInputError, match="no longer exists"):
        write_report(out)


def test_a_closed_pipe_ends_the_command_quietly():
    reader = "import sys; sys.stdin.readline()"  # reads one line and leaves
    shown = subprocess.run(f"{sys.executable} -m lightswe tasks show pool | {sys.executable} -c '{reader}'; "
                           "echo \"status=${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                           capture_output=True, text=True, timeout=120)
    assert "status=141" in shown.stdout and "Traceback" not in shown.stderr, shown.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_build_and_validate_from_a_local_mirror(tmp_path):
    """`tasks build --pool-file` over a mirror (git clone --mirror) of a real repository with history, then
    `tasks validate` of what it wrote from another cache (the bases replayed): no patch 0.0, gold 1.0."""
    history, *_ = toolz_history()
    mirror = history.with_name("toolz-interpose.git")  # a fixed path: the images are reused by the next run
    if not (mirror / "HEAD").is_file():
        subprocess.run(["git", "clone", "-q", "--mirror", str(history), str(mirror)], check=True)
    commit = git(mirror, "rev-parse", "HEAD~2").strip()
    (tmp_path / "pool.json").write_text(json.dumps({"repositories": [
        {"name": "mytoolz", "git": str(mirror), "commit": commit, "tests": ["toolz/tests"],
         "src": ["toolz/itertoolz.py"]}]}))
    run = lambda *args, **env: subprocess.run([sys.executable, "-m", "lightswe", "tasks", *args],  # noqa: E731
                                              capture_output=True, text=True, timeout=900,
                                              env={**os.environ, **env})
    built = run("build", "--pool-file", str(tmp_path / "pool.json"), "--out", str(tmp_path / "out"),
                "--per-repo", "1", "--gold-runs", "1", "--base-runs", "1", "--max-attempts", "6")
    assert built.returncode == 0, built.stderr[-2000:]
    [row] = [json.loads(line) for line in (tmp_path / "out" / "instances.jsonl").read_text().splitlines()]
    assert (row["repo"], row["source"], row["environment_setup_commit"]) == \
        ("git/mytoolz", str(mirror), commit)
    assert row["metadata"]["split"] == "train" and "sdist_sha256" not in row["metadata"]
    checked = run("validate", str(tmp_path / "out" / "instances.jsonl"), "--gold-runs", "1", "--base-runs", "1",
                  "--no-progress", LIGHTSWE_CACHE=str(tmp_path / "fresh-cache"))
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    assert json.loads(checked.stdout.splitlines()[0])["rewards"] == {"no_patch": [0.0], "gold": [1.0]}
