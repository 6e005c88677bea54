"""Trajectory records: round trip through JSONL and Parquet, crash tolerance, schema validation."""

from __future__ import annotations

import json

import pytest
from lightswe.agent.trajectory import (
    EpisodeStatus,
    Message,
    Trajectory,
    TrajectoryFormatError,
    TrajectoryWriter,
    finished_episode_ids,
    read_trajectories,
)


def make(i: int, reward: float | None = 1.0) -> Trajectory:
    return Trajectory(
        episode_id=f"t{i}/g/0", task_id=f"t{i}", group_id="g", sample_index=0, token_ids=[257, 104, 105, 258, 10],
        loss_mask=[0, 1, 1, 1, 0], logprobs=[0.0, -0.25, -1.5, -0.125, 0.0], reward=reward,
        status=EpisodeStatus.SUBMITTED,
        messages=[Message(role="assistant", content="hi", start=0, end=5, tool_call={"name": "submit", "arguments": {}},
                          finish_reason="stop")],
        tests={"tests/test_x.py::test_a": "passed"}, timings={"total": 1.5}, num_steps=1, created_at=1.0)


@pytest.mark.parametrize("parquet", [True, False], ids=["parquet", "jsonl"])
def test_round_trip(tmp_path, parquet):
    with TrajectoryWriter(tmp_path, shard_size=2, parquet=parquet) as writer:
        for i in range(5):
            writer.write(make(i, reward=None if i == 4 else 1.0))
    suffixes = sorted(p.suffix for p in tmp_path.iterdir())
    assert suffixes == ([".parquet"] * 3 if parquet else [".jsonl"] * 3)  # close() seals the partial shard too
    got = sorted(read_trajectories(tmp_path), key=lambda t: t.episode_id)
    assert got == [make(i, reward=None if i == 4 else 1.0) for i in range(5)]
    assert finished_episode_ids(tmp_path) == {f"t{i}/g/0" for i in range(5)}


def test_each_write_is_durable_before_close(tmp_path):
    writer = TrajectoryWriter(tmp_path, shard_size=100)
    writer.write(make(0))
    writer.write(make(1))
    assert finished_episode_ids(tmp_path) == {"t0/g/0", "t1/g/0"}  # readable while the writer is open


def test_torn_last_line_loses_only_that_episode(tmp_path):
    writer = TrajectoryWriter(tmp_path, shard_size=100)
    writer.write(make(0))
    segment = next(tmp_path.glob("*.jsonl"))
    with segment.open("a") as handle:  # what a kill -9 in the middle of write() leaves
        handle.write(json.dumps(make(1).to_dict())[:40])
    assert finished_episode_ids(tmp_path) == {"t0/g/0"}


def test_parquet_shard_wins_over_leftover_segment(tmp_path):
    with TrajectoryWriter(tmp_path, shard_size=1) as writer:
        writer.write(make(0))
    shard = next(tmp_path.glob("*.parquet"))
    shard.with_suffix(".jsonl").write_text(json.dumps(make(0).to_dict()) + "\n")  # crash between rename and unlink
    assert [t.episode_id for t in read_trajectories(tmp_path)] == ["t0/g/0"]


@pytest.mark.parametrize("field,value,message", [
    ("loss_mask", [0, 1, 2, 1, 0], "only 0 and 1"),
    ("logprobs", [0.0, -1.0], "lengths differ"),
    ("status", "won", "not one of"),
    ("logprobs", [0.0, 0.5, -1.0, -1.0, 0.0], "<= 0"),
    ("messages", [{"role": "user", "content": "x", "start": 0, "end": 99}], "outside"),
    ("task_id", 3, "must be str"),
], ids=["mask", "lengths", "status", "positive-logprob", "span", "type"])
def test_reader_rejects_bad_records(tmp_path, field, value, message):
    record = make(0).to_dict()
    record[field] = value
    (tmp_path / "part-x-00000.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(make(1).to_dict()) + "\n")
    with pytest.raises(TrajectoryFormatError, match=message):
        list(read_trajectories(tmp_path))


def test_missing_directory_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="lightswe rollout"):
        list(read_trajectories(tmp_path / "nope"))


@pytest.mark.parametrize("parquet", [True, False], ids=["parquet", "jsonl"])
def test_segments_have_stable_names_and_job_order(tmp_path, parquet):
    """What a rollout stores does not depend on when its episodes finished: segment names count the folder's
    writers (no clock, no random suffix), and a sealed segment lists episodes in job order."""
    order = [f"t{i}/g/0" for i in range(5)]
    stored = []
    for arrival, folder in (([3, 0, 4, 1, 2], tmp_path / "a"), ([0, 1, 2, 3, 4], tmp_path / "b")):
        with TrajectoryWriter(folder, shard_size=3, parquet=parquet, order=order) as writer:
            for i in arrival[:4]:
                writer.write(make(i))
        with TrajectoryWriter(folder, shard_size=3, parquet=parquet, order=order) as writer:  # a resumed run
            writer.write(make(arrival[4]))
        stored.append({p.name: [t.episode_id for t in read_trajectories_of(p)] for p in sorted(folder.iterdir())})
    suffix = ".parquet" if parquet else ".jsonl"
    names = [f"part-w0001-00000{suffix}", f"part-w0001-00001{suffix}", f"part-w0002-00000{suffix}"]
    assert list(stored[0]) == names == list(stored[1])
    assert stored[0][names[0]] == ["t0/g/0", "t3/g/0", "t4/g/0"]  # the first three to finish, in job order
    assert stored[1][names[0]] == ["t0/g/0", "t1/g/0", "t2/g/0"]


def read_trajectories_of(path):
    """The episodes of one segment, in stored order."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [Trajectory.from_dict(r) for r in pq.read_table(path).to_pylist()]
    return [Trajectory.from_dict(json.loads(line)) for line in path.read_text().splitlines()]


def test_a_graded_record_supersedes_the_machines_failure_of_the_same_episode(tmp_path):
    """A resume retries sandbox_error episodes (not 'finished'); whichever segment holds the graded record, it is
    the one read, and an episode that only ever failed on the machine is read once, last."""
    import dataclasses

    def infra(i: int) -> Trajectory:
        return dataclasses.replace(make(i, reward=None), status=EpisodeStatus.SANDBOX_ERROR, error="EngineError: x")

    with TrajectoryWriter(tmp_path) as writer:  # first run: t0 and t1 fail on the machine, t2 is graded
        for t in (infra(0), infra(1), make(2, reward=0.0)):
            writer.write(t)
    assert finished_episode_ids(tmp_path) == {"t2/g/0"}
    with TrajectoryWriter(tmp_path) as writer:  # the resume: t0 graded now, t1 fails again
        writer.write(make(0, reward=1.0))
        writer.write(infra(1))
    got = list(read_trajectories(tmp_path))
    assert [t.episode_id for t in got] == ["t2/g/0", "t0/g/0", "t1/g/0"]
    assert [(t.graded, t.reward) for t in got] == [(True, 0.0), (True, 1.0), (False, None)]
    assert finished_episode_ids(tmp_path) == {"t0/g/0", "t2/g/0"}
