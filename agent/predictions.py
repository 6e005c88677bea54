"""SWE-bench predictions from stored trajectories: what the official harness evaluates.

Format (SWE-bench ``run_evaluation --predictions_path``, keys ``KEY_INSTANCE_ID``/``KEY_MODEL``/
``KEY_PREDICTION`` of ``swebench.harness.constants``): JSON lines, one object per instance, exactly
``{"instance_id": str, "model_name_or_path": str, "model_patch": str}``; ``model_patch`` is a ``git diff``
against the base commit ("" when the agent changed nothing). One prediction per task: of a task's episodes the
first sample of the earliest round (``group_id`` ``<task>@<round>``, ``sample_index``), so repeated samples do
not let a run pick its best. Written atomically (temporary file + rename).

Example::

    write_predictions(read_trajectories("runs/eval1"), "runs/eval1/predictions.jsonl", model="my-model")
    check_predictions("runs/eval1/predictions.jsonl")  # raises PredictionsFormatError naming the line
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from lightswe.errors import UserInputError
from lightswe.jsonl import jsonl_records

KEYS = ("instance_id", "model_name_or_path", "model_patch")


class PredictionsFormatError(UserInputError):
    """A predictions file that the SWE-bench harness would not accept: names the line and the field."""


def _order(trajectory) -> tuple[int, int]:
    round_text = trajectory.group_id.rpartition("@")[2]
    return (int(round_text) if round_text.isdigit() else 0, trajectory.sample_index)


def predictions(trajectories: Iterable, model: str) -> list[dict]:
    """One SWE-bench prediction per task (see the module doc), sorted by instance id."""
    chosen: dict[str, object] = {}
    for trajectory in trajectories:
        best = chosen.get(trajectory.task_id)
        if best is None or _order(trajectory) < _order(best):
            chosen[trajectory.task_id] = trajectory
    return [{"instance_id": task, "model_name_or_path": model,
             "model_patch": chosen[task].model_patch or ""} for task in sorted(chosen)]


def write_predictions(trajectories: Iterable, path: str | Path, *, model: str) -> int:
    """Write predictions JSONL to ``path`` atomically; returns the number written."""
    if not model:
        raise PredictionsFormatError("model_name_or_path is empty; fix: name the model (e.g. the policy spec)")
    rows = predictions(trajectories, model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # nothing half-written is left (a failed write or rename)
    check_predictions(path)
    return len(rows)


def check_predictions(path: str | Path) -> int:
    """Validate a predictions JSONL against the official schema; returns the count or raises."""
    path = Path(path)
    seen: set[str] = set()
    count = 0
    for where, row in jsonl_records(path, error=PredictionsFormatError):
        if not isinstance(row, dict) or set(row) != set(KEYS):
            raise PredictionsFormatError(f"{where}: expected exactly the keys {list(KEYS)}, got "
                                         f"{sorted(row) if isinstance(row, dict) else type(row).__name__}")
        bad = [k for k in KEYS if not isinstance(row[k], str)]
        if bad or not row["instance_id"]:
            raise PredictionsFormatError(f"{where}: {bad or ['instance_id']} must be non-empty strings")
        if row["model_patch"] and not row["model_patch"].startswith("diff --git "):
            raise PredictionsFormatError(f"{where}: model_patch is not a git diff (it must start with "
                                         "'diff --git')")
        if row["instance_id"] in seen:
            raise PredictionsFormatError(f"{where}: instance_id {row['instance_id']!r} appears twice")
        seen.add(row["instance_id"])
        count += 1
    return count
