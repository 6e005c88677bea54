"""A SWE-bench-format JSONL whose repo is a local git repository with real history runs through the env.

The repository is made from two consecutive real releases of toolz (PyPI sdists, pinned by sha256): commit 1
is toolz 1.1.0, commit 2 is the real upstream fix of ``interpose`` on an empty sequence shipped in 1.2.0
(its ``itertoolz.py``), commit 3 adds 1.2.0's new test. The instance is written as SWE-bench publishes it
(lists as JSON text, extra fields) and must give reward 0.0 without the fix and 1.0 with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile

import pytest

from lightswe.tasks import sources
from lightswe.tasks.instance import read_jsonl
from lightswe.tasks.validate import Validator

pytestmark = pytest.mark.docker

SHA = {"1.1.0": "27a5c770d068c110d9ed9323f24f1543e83b2f300a687b7891c1a6d56b697b5b",
       "1.2.0": "9667a038e9d6ecba37995e26cb2f59ec6420b6ad8dd9677de59db9b956b08490"}
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "toolz", "GIT_AUTHOR_EMAIL": "toolz@localhost",
           "GIT_COMMITTER_NAME": "toolz", "GIT_COMMITTER_EMAIL": "toolz@localhost",
           "GIT_AUTHOR_DATE": "2025-10-17T00:00:00+0000", "GIT_COMMITTER_DATE": "2025-10-17T00:00:00+0000"}
TEST = "toolz/tests/test_itertoolz.py"


def git(repo, *args: str) -> str:
    """stdout of git, unstripped (a diff's last context line may be a lone space)."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=GIT_ENV).stdout


def unpack(version: str, into):
    with tarfile.open(sources.download_sdist("toolz", version, SHA[version])) as archive:
        archive.extractall(into, filter="data")
    return into / f"toolz-{version}"


def toolz_history():
    """(path, base, fix, tests) of a real-history repository; deterministic, so images are reused."""
    repo = sources.CACHE_DIR / "test-repos" / "toolz-interpose"
    if not (repo / ".git").is_dir():
        work = sources.CACHE_DIR / "test-repos" / "unpack"
        shutil.rmtree(work, ignore_errors=True)
        old, new = unpack("1.1.0", work), unpack("1.2.0", work)
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(old, repo)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A", "-f")
        git(repo, "commit", "-q", "-m", "toolz 1.1.0")
        shutil.copy(new / "toolz/itertoolz.py", repo / "toolz/itertoolz.py")
        git(repo, "commit", "-q", "-am", "Fix interpose on an empty sequence (from toolz 1.2.0)")
        text = (repo / TEST).read_text()
        anchor = "\n\ndef test_frequencies():"
        assert anchor in text
        test = '\n\ndef test_interpose_empty():\n    assert list(interpose("a", [])) == []\n'
        (repo / TEST).write_text(text.replace(anchor, test + anchor, 1))
        git(repo, "commit", "-q", "-am", "Test interpose on an empty sequence (from toolz 1.2.0)")
        shutil.rmtree(work, ignore_errors=True)
    base, fix, tests = (git(repo, "rev-parse", f"HEAD~{n}").strip() for n in (2, 1, 0))
    return repo, base, fix, tests


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    repo, base, fix, tests = toolz_history()
    record = {  # SWE-bench row shape: JSON-text lists, fields lightswe does not use
        "repo": "pytoolz/toolz", "instance_id": "pytoolz__toolz-interpose-empty", "base_commit": base,
        "patch": git(repo, "diff", base, fix), "test_patch": git(repo, "diff", fix, tests),
        "problem_statement": "interpose raises StopIteration on an empty sequence instead of yielding nothing",
        "hints_text": "", "created_at": "2025-10-17T00:00:00Z", "version": "1.1",
        "FAIL_TO_PASS": json.dumps([f"{TEST}::test_interpose_empty"]),
        "PASS_TO_PASS": json.dumps([f"{TEST}::test_interpose", f"{TEST}::test_frequencies"]),
        "environment_setup_commit": base, "difficulty": "<15 min fix",
        "source": str(repo), "install_command": "python -m pip install -q -e .",
        "test_command": "python -m pytest -p no:cacheprovider -o addopts= -q",
    }
    path = tmp_path_factory.mktemp("swe") / "local.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


def test_local_git_task_gives_correct_rewards(task_file):
    [instance] = read_jsonl(task_file)
    result = Validator(gold_runs=1).validate(instance)
    assert result.ok, result.reason
    assert result.rewards == {"no_patch": [0.0], "gold": [1.0]}


def test_a_patch_that_does_not_apply_is_reported(task_file):
    [instance] = read_jsonl(task_file)
    instance.patch = instance.patch.replace("next(inposed)", "next(not_in_the_file)")
    result = Validator(gold_runs=1).validate(instance)
    assert not result.ok and "does not apply" in result.reason, result.reason
