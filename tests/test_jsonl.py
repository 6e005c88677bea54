"""``lightswe.jsonl``: the one JSON Lines reader (task files, datasets, shipped pools, predictions, trajectories)."""

from __future__ import annotations

import gzip
import logging

import pytest
from lightswe.agent.predictions import PredictionsFormatError, check_predictions
from lightswe.jsonl import jsonl_records
from lightswe.tasks.instance import TaskFormatError, read_jsonl

ROWS = '{"a": 1}\n\n   \n{"b": [2, "\u2028"]}\n'


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz", "ROWS.JSONL.GZ"])
def test_records_with_their_place_plain_or_gzipped(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(ROWS.encode()) if name.lower().endswith(".gz") else ROWS.encode())
    assert list(jsonl_records(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:4", {"b": [2, "\u2028"]})]
    assert [w for w, _ in jsonl_records(path, short_names=True)] == [f"{name}:1", f"{name}:4"]


def test_a_bad_line_raises_the_callers_error_naming_it(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(TaskFormatError, match=r"bad\.jsonl:2: not valid JSON"):
        list(jsonl_records(path, error=TaskFormatError))
    with pytest.raises(TaskFormatError, match=r"bad\.jsonl:2: not valid JSON"):  # in the middle: torn or not
        list(jsonl_records(path, error=TaskFormatError, torn_last=True))


def test_a_torn_last_line_is_skipped_only_when_asked(tmp_path, caplog):
    path = tmp_path / "segment.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": "cut by a kil\n\n')
    with caplog.at_level(logging.WARNING, logger="lightswe.jsonl"):
        assert [r for _, r in jsonl_records(path, torn_last=True)] == [{"a": 1}, {"a": 2}]
    assert f"{path}:3: skipping a torn last record" in caplog.text
    with pytest.raises(ValueError, match=r"segment\.jsonl:3"):
        list(jsonl_records(path))


@pytest.mark.parametrize(("read", "error"), [
    (read_jsonl, TaskFormatError),
    (check_predictions, PredictionsFormatError),
], ids=["task-file", "predictions"])
def test_the_package_readers_use_it(tmp_path, read, error):
    path = tmp_path / "x.jsonl"
    path.write_text("{not json}\n")
    with pytest.raises(error, match=r"x\.jsonl:1: not valid JSON"):
        read(path)
