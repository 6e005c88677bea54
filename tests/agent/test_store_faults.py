"""The trajectory store and the learner's intake under real failures: the host's disk full while writing (a
real tmpfs of a few KiB), Ctrl-C (SIGINT to a real writer process) mid-write, and records the learner cannot train
on. Nothing half-written is left, every finished episode is read back, a resume completes the rest with no
duplicate, and a bad record is refused in one line (never trained on)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lightswe.agent.trajectory import (EpisodeStatus, Trajectory, TrajectoryFormatError, TrajectoryStoreError,
                                       TrajectoryWriter, finished_episode_ids, read_trajectories)
from lightswe.errors import InfrastructureError


def _trajectory(i: int, n: int = 1500, **fields) -> Trajectory:
    return Trajectory(**{"episode_id": f"t@0/{i}", "task_id": "t", "group_id": "t@0", "sample_index": i,
                         "token_ids": list(range(n)), "loss_mask": [0] + [1] * (n - 1),
                         "logprobs": [0.0] + [-0.5] * (n - 1), "reward": 1.0, "status": EpisodeStatus.SUBMITTED,
                         **fields})


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB tmpfs (needs root with CAP_SYS_ADMIN: skipped elsewhere); grown with ``grow()``."""
    where = tmp_path / "disk"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(where)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _grow(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=8m", str(where)], check=True)


@pytest.mark.parametrize(("parquet", "shard_size"), [(False, 1000), (True, 1000), (True, 3), (False, 3)])
def test_disk_full_while_writing_keeps_every_finished_episode(small_disk, parquet, shard_size):
    ids = [f"t@0/{i}" for i in range(30)]
    written = []
    with pytest.raises(TrajectoryStoreError, match="No space left on device.*run the same command again") as info:
        with TrajectoryWriter(small_disk, parquet=parquet, shard_size=shard_size, order=ids) as writer:
            for i in range(30):
                writer.write(_trajectory(i))
                written.append(f"t@0/{i}")
    assert isinstance(info.value, InfrastructureError)  # the CLI prints it in one line, exit 1
    assert not list(small_disk.glob("*.tmp"))  # no half-written shard left behind
    stored = [t.episode_id for t in read_trajectories(small_disk)]  # a torn last line is skipped, nothing else
    assert set(written) <= set(stored) and len(stored) == len(set(stored)) and len(stored) <= len(written) + 1

    _grow(small_disk)  # space freed: the resume writes the rest
    done = finished_episode_ids(small_disk)
    with TrajectoryWriter(small_disk, parquet=parquet, shard_size=shard_size, order=ids) as writer:
        for i in range(30):
            if f"t@0/{i}" not in done:
                writer.write(_trajectory(i))
    stored = [t.episode_id for t in read_trajectories(small_disk)]
    assert sorted(stored) == sorted(ids)


def test_a_writer_that_failed_never_appends_after_its_torn_line(small_disk):
    """The same writer used again once space is back (a caller that caught the error): its next record goes to
    a new segment, so the torn line stays a segment's last (skipped). Before: the next record was glued to the
    torn line and skipped on read with it, although its write had returned (a finished, counted episode lost)."""
    writer = TrajectoryWriter(small_disk, parquet=False, shard_size=1000)
    count = 0
    with pytest.raises(TrajectoryStoreError):
        while True:
            writer.write(_trajectory(count))
            count += 1
    _grow(small_disk)
    writer.write(_trajectory(999))
    writer.close()
    stored = {t.episode_id for t in read_trajectories(small_disk)}
    assert {f"t@0/{i}" for i in range(count)} | {"t@0/999"} <= stored


WRITER = """
import signal
import sys
# Python raises KeyboardInterrupt on SIGINT only where SIGINT was not ignored at start-up; a test run started in
# the background by a non-interactive shell (nohup ... &) hands its children SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
from lightswe.agent.trajectory import TrajectoryWriter
sys.path.insert(0, {tests!r})
from test_store_faults import _trajectory
with TrajectoryWriter({out!r}, parquet={parquet}, shard_size=7) as writer:
    for i in range(100_000):
        writer.write(_trajectory(i, n=400))
        print(i, flush=True)
"""


@pytest.mark.parametrize("parquet", [False, True])
def test_ctrl_c_during_writes_leaves_a_readable_store(tmp_path, parquet):
    out = tmp_path / "run"
    code = WRITER.format(tests=str(Path(__file__).parent), out=str(out), parquet=parquet)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "0"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    confirmed = 1 + len(rest.split())  # writes that returned before the interrupt
    stored = [t.episode_id for t in read_trajectories(out)]
    assert len(stored) == len(set(stored)) and {f"t@0/{i}" for i in range(confirmed)} <= set(stored)
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize(("bad", "expected"), [
    ({"logprobs": [0.0] + [-0.5] * 8 + [float("nan")]}, "finite"),
    ({"logprobs": [0.0] + [-0.5] * 8 + [float("-inf")]}, "finite"),
    ({"logprobs": [0.0] + [-0.5] * 8 + [0.7]}, "finite"),
    ({"logprobs": [0.0] * 9}, "lengths differ"),
    ({"loss_mask": [1] * 11}, "lengths differ"),
    ({"token_ids": [-3] + list(range(9))}, "non-negative")])
def test_the_learner_refuses_a_trajectory_it_cannot_train_on(bad, expected):
    """An in-memory trajectory (never read through the store's validation) with inconsistent tokens / log-probs:
    ``batch_from`` refuses it in one line naming the episode, before any tensor is built."""
    from lightswe.agent.train_step import batch_from

    good = _trajectory(0, n=10)
    broken = _trajectory(1, n=10)
    for key, value in bad.items():
        object.__setattr__(broken, key, value)
    with pytest.raises(TrajectoryFormatError, match=f"episode t@0/1.*{expected}") as info:
        batch_from([good, broken], [1.0, -1.0])
    assert "\n" not in str(info.value)
    assert batch_from([good], [1.0]).input_ids.shape == (1, 10)


def test_a_stored_non_finite_log_prob_is_refused_on_read(tmp_path):
    with TrajectoryWriter(tmp_path, parquet=False) as writer:
        writer.write(_trajectory(0, n=10))
    segment = next(tmp_path.glob("*.jsonl"))
    segment.write_text(segment.read_text().replace("-0.5]", "-Infinity]"))
    with pytest.raises(TrajectoryFormatError, match="finite"):
        list(read_trajectories(tmp_path))


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(small_disk):
    """The tiny model's checkpoint does not fit the tmpfs: one-line CheckpointError, no ``.tmp-*`` directory left,
    ``latest`` still names the previous (small) checkpoint and it loads."""
    import torch
    from lightswe.agent.checkpointing import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

    small = torch.nn.Linear(4, 4)
    save_checkpoint(small_disk, step=1, model=small, optimizer=torch.optim.AdamW(small.parameters()))
    big = torch.nn.Linear(256, 256)  # 256 KiB of weights, twice that of moments: past the 96 KiB disk
    opt = torch.optim.AdamW(big.parameters())
    big(torch.ones(1, 256)).sum().backward()
    opt.step()
    with pytest.raises(CheckpointError, match="step 2.*previous checkpoint is intact") as info:
        save_checkpoint(small_disk, step=2, model=big, optimizer=opt)
    assert isinstance(info.value, InfrastructureError) and "\n" not in str(info.value)
    assert not list(small_disk.glob(".tmp-*"))
    assert latest_checkpoint(small_disk).name == "step-000001"
    assert load_checkpoint(small_disk, model=torch.nn.Linear(4, 4), restore_rng=False)["step"] == 1
