"""A SWE-bench-format JSONL whose repo is a local git repository with real history runs through the env.

The repository is made from two consecutive real releases of toolz (PyPI sdists, pinned by sha256): commit 1
is toolz 1.1.0, commit 2 is the real upstream fix of ``interpose`` on an empty sequence shipped in 1.2.0
(its ``itertoolz.py``), commit 3 adds 1.2.0's new test. The instance is written as SWE-bench publishes it
(lists as JSON text, extra fields) and must give reward 0.0 without the fix and 1.0 with it.
"""

from __future__ import annotations

import json

import pytest

from lightswe.tasks.instance import read_jsonl
from lightswe.tasks.validate import Validator

from .histories import TEST, git, toolz_history

pytestmark = pytest.mark.docker


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
    result = Validator(gold_runs=1, base_runs=1).validate(instance)
    assert result.ok, result.reason
    assert result.rewards == {"no_patch": [0.0], "gold": [1.0]}


def test_a_patch_that_does_not_apply_is_reported(task_file):
    [instance] = read_jsonl(task_file)
    instance.patch = instance.patch.replace("next(inposed)", "next(not_in_the_file)")
    result = Validator(gold_runs=1, base_runs=1).validate(instance)
    assert not result.ok and "does not apply" in result.reason, result.reason
