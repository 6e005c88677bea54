"""Loading SWE-bench JSONL as published, and clear errors for bad records."""

from __future__ import annotations

import json

import pytest

from lightswe.tasks.instance import TaskFormatError, read_jsonl, write_jsonl

SWE_BENCH_RECORD = {  # the shape of princeton-nlp/SWE-bench rows: lists as JSON text, extra fields
    "repo": "pytoolz/toolz", "instance_id": "pytoolz__toolz-1", "base_commit": "a" * 40,
    "patch": "diff --git a/x b/x\n", "test_patch": "", "problem_statement": "interpose fails on []",
    "hints_text": "", "created_at": "2025-10-17T00:00:00Z", "version": "1.1",
    "FAIL_TO_PASS": json.dumps(["toolz/tests/test_itertoolz.py::test_interpose_empty"]),
    "PASS_TO_PASS": json.dumps(["toolz/tests/test_itertoolz.py::test_interpose"]),
    "environment_setup_commit": "a" * 40, "difficulty": "<15 min fix", "image_name": "ignored",
}


def write_lines(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_swe_bench_jsonl_loads_as_it_comes(tmp_path):
    [instance] = read_jsonl(write_lines(tmp_path / "swe.jsonl", [SWE_BENCH_RECORD]))
    assert instance.FAIL_TO_PASS == ["toolz/tests/test_itertoolz.py::test_interpose_empty"]
    assert instance.PASS_TO_PASS == ["toolz/tests/test_itertoolz.py::test_interpose"]
    assert instance.version == "1.1" and instance.repo == "pytoolz/toolz"
    write_jsonl([instance], tmp_path / "round.jsonl")
    assert read_jsonl(tmp_path / "round.jsonl") == [instance]


@pytest.mark.parametrize("change,message", [
    ({"patch": None}, "missing field"),
    ({"FAIL_TO_PASS": "not json"}, "'FAIL_TO_PASS' is not a JSON list"),
    ({"FAIL_TO_PASS": "[]"}, "'FAIL_TO_PASS' is empty"),
    ({"PASS_TO_PASS": [1, 2]}, "'PASS_TO_PASS' must be a list of test ids"),
    ({"base_commit": 12}, "'base_commit' must be a string"),
], ids=["missing", "bad-json", "empty-f2p", "non-str-ids", "wrong-type"])
def test_bad_record_names_field_and_line(tmp_path, change, message):
    bad = {k: v for k, v in {**SWE_BENCH_RECORD, **change}.items() if v is not None}
    path = write_lines(tmp_path / "bad.jsonl", [SWE_BENCH_RECORD, "", bad])
    with pytest.raises(TaskFormatError, match=message) as err:
        read_jsonl(path)
    assert f"{path}:3" in str(err.value)


def test_not_json_names_the_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [SWE_BENCH_RECORD, "{oops"])
    with pytest.raises(TaskFormatError, match=r"bad.jsonl:2: not valid JSON"):
        read_jsonl(path)
