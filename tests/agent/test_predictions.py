"""SWE-bench predictions from stored trajectories: one per task, the official keys, written atomically."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lightswe.agent.predictions import PredictionsFormatError, check_predictions, predictions
from lightswe.agent.trajectory import TrajectoryWriter, read_trajectories
from lightswe.cli import main

from .test_viewer import episode

PATCH = "diff --git a/pkg/m.py b/pkg/m.py\n--- a/pkg/m.py\n+++ b/pkg/m.py\n@@ -1 +1 @@\n-a\n+b\n"


def sample(task: int, group: str, index: int, patch: str):
    t = episode(task, resolved=True)
    return dataclasses.replace(t, episode_id=f"{group}/{index}", group_id=group, sample_index=index,
                               model_patch=patch)


def test_one_prediction_per_task_the_first_sample_of_the_first_round():
    rows = predictions([sample(0, "pkg-0@1", 0, "late"), sample(0, "pkg-0@0", 1, "second"),
                        sample(0, "pkg-0@0", 0, PATCH), sample(1, "pkg-1@0", 0, "")], model="m")
    assert rows == [{"instance_id": "pkg-0", "model_name_or_path": "m", "model_patch": PATCH},
                    {"instance_id": "pkg-1", "model_name_or_path": "m", "model_patch": ""}]


def test_eval_writes_predictions_the_official_harness_reads(tmp_path, capsys):
    with TrajectoryWriter(tmp_path / "run") as writer:
        writer.write(sample(0, "pkg-0@0", 0, PATCH))
        writer.write(sample(1, "pkg-1@0", 0, ""))
    assert [t.model_patch for t in read_trajectories(tmp_path / "run")] == [PATCH, ""]  # stored, round trip
    out = tmp_path / "preds.jsonl"
    assert main(["eval", "--out", str(tmp_path / "run"), "--predictions", str(out), "--model-name", "lightswe-1"]) == 0
    assert check_predictions(out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [sorted(r) for r in rows] == [["instance_id", "model_name_or_path", "model_patch"]] * 2
    assert rows[0] == {"instance_id": "pkg-0", "model_name_or_path": "lightswe-1", "model_patch": PATCH}
    utils = pytest.importorskip("swebench.harness.utils")  # the harness's own reader accepts it
    assert utils.get_predictions_from_file(str(out), "unused", "test") == rows


def test_a_predictions_path_that_cannot_be_written_fails_before_the_run_and_leaves_nothing(tmp_path, capsys):
    from lightswe.agent.predictions import write_predictions

    with TrajectoryWriter(tmp_path / "run") as writer:
        writer.write(sample(0, "pkg-0@0", 0, PATCH))
    (tmp_path / "a_file").write_text("x")
    for bad, message in ((tmp_path / "run", "is a directory; fix: pass a file path"),
                         (tmp_path / "a_file" / "preds.jsonl", "lies under the file"),
                         (tmp_path / "preds.json", "fix: name it e.g. "),
                         (tmp_path / "preds.txt", "only from a path ending in .jsonl")):
        assert main(["eval", "--out", str(tmp_path / "run"), "--predictions", str(bad)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lightswe eval: error: --predictions") and message in lines[0]
    # with --tasks the check comes before any episode runs: no output folder
    assert main(["eval", "--tasks", "demo", "--out", str(tmp_path / "new"), "--predictions", str(tmp_path)]) == 2
    assert not (tmp_path / "new").exists()
    # the writer itself leaves no temporary file behind when the rename fails
    with pytest.raises(IsADirectoryError):
        write_predictions(read_trajectories(tmp_path / "run"), tmp_path / "run", model="m")
    assert not (tmp_path / "run.tmp").exists()


@pytest.mark.parametrize("line,message", [
    ('{"instance_id": "a", "model_patch": ""}', "exactly the keys"),
    ('{"instance_id": "a", "model_name_or_path": "m", "model_patch": 3}', "non-empty strings"),
    ('{"instance_id": "a", "model_name_or_path": "m", "model_patch": "--- a/x"}', "not a git diff"),
    ('{"instance_id": "a", "model_name_or_path": "m", "model_patch": ""}\n'
     '{"instance_id": "a", "model_name_or_path": "m", "model_patch": ""}', "appears twice"),
])
def test_the_schema_check_names_the_line_and_the_field(tmp_path, line, message):
    (tmp_path / "p.jsonl").write_text(line + "\n")
    with pytest.raises(PredictionsFormatError, match=message):
        check_predictions(tmp_path / "p.jsonl")
