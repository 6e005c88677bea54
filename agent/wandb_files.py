"""What a run folder's W&B files hold: the history rows of each attempt's run file (``OUT/wandb/offline-run-*-ID/
run-ID.wandb`` offline, ``run-*-ID/`` online: the transaction log ``wandb sync`` uploads).

``lightswe.agent.metrics`` reads the steps a W&B run already holds when a run resumes, so that it continues at
the next one (no step twice, none missing), offline too, where W&B itself knows nothing of earlier attempts.
wandb (0.31) ships no reader of its own files; the format is LevelDB's log format (32 KiB blocks of records, each
with a 7-byte header: CRC-32C, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte file header (``:W&B``, magic
``0xBEE1``, version), each record one ``wandb.proto.wandb_internal_pb2.Record`` (wandb's ``sdk/internal/
datastore.py`` before 0.19, and wandb-core's ``leveldblog`` since).

Example::

    steps = held_steps("runs/t1", "ab12cd34")     # [1, 2, 3]: the steps W&B has of that run, all attempts
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
FULL, LAST = 1, 4


def records(path: str | Path):
    """Every complete ``Record`` in the file, in order (a torn last record, from a killed writer, is left out).

    Raises:
        ValueError: not a W&B run file.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if not data:  # created, nothing flushed yet
        return
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (header {data[:7]!r})")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding to the block's end
            pos += left
            continue
        if pos + 7 + length > len(data):  # torn: the writer was killed mid-record
            return
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def history(path: str | Path) -> list[dict]:
    """The run's history rows: ``{"_step": 3, "rollout/success_rate": 0.5, ...}`` in the order logged."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_files(out_dir: str | Path, run_id: str) -> list[Path]:
    """The run files of W&B run ``run_id`` under ``out_dir/wandb``, one per attempt, oldest first."""
    found = Path(out_dir, "wandb").glob(f"*run-*-{run_id}*/run-{run_id}.wandb")
    return sorted(found, key=lambda p: p.parent.name.removeprefix("offline-"))


def held_steps(out_dir: str | Path, run_id: str) -> list[int]:
    """The ``_step`` of every history row W&B run ``run_id`` holds in ``out_dir``'s files, over all attempts.

    Raises:
        ValueError: a file that is not a W&B run file; ImportError: wandb is not installed.
    """
    return [row["_step"] for path in run_files(out_dir, run_id) for row in history(path) if "_step" in row]
