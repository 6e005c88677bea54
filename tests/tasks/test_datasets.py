"""Every input form through the one loader, with rows in published form (lists as JSON text, extra fields)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lightswe.tasks.datasets import load_tasks
from lightswe.tasks.instance import TaskFormatError
from lightswe.tasks.patches import reverse_patch


def published(i: int) -> dict:
    """A SWE-bench row as the Hub serves it: FAIL_TO_PASS/PASS_TO_PASS are JSON-encoded strings."""
    return {"repo": "pytoolz/toolz", "instance_id": f"pytoolz__toolz-{i}", "base_commit": "a" * 40,
            "patch": "diff --git a/x b/x\n", "test_patch": "", "problem_statement": f"problem {i}",
            "hints_text": "", "created_at": "2025-01-01T00:00:00Z", "version": "1.1",
            "FAIL_TO_PASS": json.dumps([f"toolz/tests/test_a.py::test_{i}"]),
            "PASS_TO_PASS": json.dumps(["toolz/tests/test_a.py::test_ok[a b-1]"]),
            "environment_setup_commit": "a" * 40, "difficulty": "<15 min fix"}


ROWS = [published(i) for i in range(4)]


def check(instances, ids=range(4)):
    assert [t.instance_id for t in instances] == [f"pytoolz__toolz-{i}" for i in ids]
    assert instances[0].FAIL_TO_PASS == [f"toolz/tests/test_a.py::test_{list(ids)[0]}"]
    assert instances[0].PASS_TO_PASS == ["toolz/tests/test_a.py::test_ok[a b-1]"]


def test_jsonl_json_array_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "t.json").write_text(json.dumps(ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "t.parquet")
    for name in ("t.jsonl", "t.json", "t.parquet"):
        check(load_tasks(tmp_path / name))
    check(load_tasks(f"{tmp_path / 't.parquet'}[1:3]"), ids=range(1, 3))


def test_a_hugging_face_dataset_directory_with_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS),
                          "dev": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(tmp_path / "ds")
    check(load_tasks(f"{tmp_path / 'ds'}:test"))
    check(load_tasks(f"{tmp_path / 'ds'}:test[0:2]"), ids=range(2))
    with pytest.raises(TaskFormatError, match="has splits"):
        load_tasks(tmp_path / "ds")
    datasets.Dataset.from_list(ROWS).save_to_disk(tmp_path / "one")
    check(load_tasks(tmp_path / "one"))


CACHE_SCRIPT = """
import datasets, os, sys, json
from datasets.arrow_writer import ArrowWriter
rows = json.loads(sys.argv[1])
d = os.path.join(datasets.config.HF_DATASETS_CACHE, "princeton-nlp___swe-bench_lite", "default", "0.0.0", "0" * 16)
os.makedirs(d)
features = datasets.Dataset.from_list(rows).features
with ArrowWriter(features=features, path=os.path.join(d, "swe-bench_lite-test.arrow")) as writer:
    for row in rows:
        writer.write(row)
    n, size = writer.finalize()
split = datasets.SplitInfo(name="test", num_examples=n, num_bytes=size, dataset_name="swe-bench_lite")
datasets.DatasetInfo(features=features, config_name="default", dataset_name="swe-bench_lite",
                     splits=datasets.SplitDict({"test": split})).write_to_directory(d)
"""


def test_a_dataset_by_name_from_the_local_cache_offline(tmp_path):
    """The layout `load_dataset` leaves in HF_HOME, read by name with split and slice, Hub switched off."""
    pytest.importorskip("datasets")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", CACHE_SCRIPT, json.dumps(ROWS)], check=True, env=env)
    shown = subprocess.run([sys.executable, "-m", "lightswe", "tasks", "show", "princeton-nlp/SWE-bench_Lite:test[1:3]"],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["instance_id"] for line in shown.stdout.splitlines()] == ["pytoolz__toolz-1",
                                                                                       "pytoolz__toolz-2"]
    missing = subprocess.run([sys.executable, "-m", "lightswe", "tasks", "show", "someone/not-cached:test"],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "local Hugging Face cache" in missing.stderr, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1  # one line, no traceback


def git(repo, *args, stdin=None):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env,
                          input=stdin).stdout


def test_a_swe_smith_row_becomes_bug_plus_reversed_fix(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "m.py").write_text("def f(x):\n    return x + 1\n\n\ndef g():\n    return 2\n")
    (repo / "old.py").write_text("A = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "clean")
    (repo / "m.py").write_text("def f(x):\n    return x - 1\n\n\ndef g():\n    return 2")  # no newline at end
    (repo / "old.py").unlink()
    (repo / "new.py").write_text("B = 2\n")
    git(repo, "add", "-A")
    bug = git(repo, "diff", "--cached")
    git(repo, "commit", "-qm", "bug")
    row = {"instance_id": "owner__proj.abc1234.func_pm_op_swap__x1", "repo": "swesmith/owner__proj.abc1234",
           "patch": bug, "FAIL_TO_PASS": json.dumps(["tests/test_m.py::test_f"]), "PASS_TO_PASS": "[]",
           "image_name": "jyangballin/swesmith.x86_64.owner_1776_proj.abc1234", "problem_statement": "f is off"}
    (tmp_path / "smith.json").write_text(json.dumps([row]))
    [task] = load_tasks(tmp_path / "smith.json")
    assert (task.repo, task.environment_setup_commit, task.base_commit) == ("owner/proj", "abc1234", "")
    assert task.metadata["bug_patch"] == bug and task.image_name == row["image_name"]
    git(repo, "apply", "--check", "-", stdin=task.patch)  # the fix undoes the bug on the buggy tree
    git(repo, "apply", "-", stdin=task.patch)
    assert git(repo, "status", "--porcelain", "--untracked-files=all") != ""
    git(repo, "add", "-A")
    assert git(repo, "diff", "--cached", "HEAD~1") == ""  # back to the clean tree exactly
    assert reverse_patch(reverse_patch(bug)) == bug


def test_bad_input_names_the_row_and_the_fix(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{**ROWS[0], "FAIL_TO_PASS": "[not json"}]))
    with pytest.raises(TaskFormatError, match=r"bad.json\[0\]: field 'FAIL_TO_PASS' is not a JSON list"):
        load_tasks(tmp_path / "bad.json")
    (tmp_path / "dup.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[0]) + "\n")
    with pytest.raises(TaskFormatError, match="appears twice"):
        load_tasks(tmp_path / "dup.jsonl")
    (tmp_path / "t.csv").write_text("x")
    with pytest.raises(TaskFormatError, match="unknown task file type"):
        load_tasks(tmp_path / "t.csv")
