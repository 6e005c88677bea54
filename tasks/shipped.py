"""Task sets shipped in the package, by name, so that no one has to build for an hour before a first run.

These names are accepted wherever tasks are (``--tasks``, ``gym.make("lightswe/SWE-v0", tasks=...)``,
:func:`lightswe.tasks.datasets.load_tasks`, the one loader), beside files and datasets:

- ``demo``: the embedded task (toolz 1.0.0 with a one-line bug in ``nth``), ``data/demo.jsonl``;
- ``pool`` or ``pool:<split>``: the synthesized pool (``data/pool_instances.jsonl.gz``), validated instances
  of the curated PyPI libraries (``data/pool.json``) made by ``lightswe tasks build``; splits
  (:mod:`lightswe.tasks.splits`): ``train``, ``test`` (= ``test_repo`` + ``test_function``), ``test_repo``
  (whole held-out repositories), ``test_function`` (held-out functions of the other repositories);

Only instance records are shipped: the Docker images are built on first use from the pinned sdists (version
and sha256 in ``pool.json``), a few seconds per repository environment and per instance. Each record keeps
its build metadata (mutation, file, function, split, the validation rewards: no patch 0.0, gold 1.0).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from lightswe.jsonl import jsonl_records
from lightswe.tasks import splits
from lightswe.durable import atomic_file
from lightswe.tasks.instance import TaskFormatError, TaskInstance, read_jsonl
from lightswe.errors import UserInputError

DEMO_FILE, POOL_FILE = "demo.jsonl", "pool_instances.jsonl.gz"
POOL_SPLITS = {
    "train": (splits.TRAIN,),
    "test": (splits.TEST_REPO, splits.TEST_FUNCTION),
    "test_repo": (splits.TEST_REPO,),
    "test_function": (splits.TEST_FUNCTION,),
}
NAMES = ("demo", "pool", *(f"pool:{name}" for name in POOL_SPLITS))
SPLIT_NAMES = (splits.TRAIN, splits.TEST_REPO, splits.TEST_FUNCTION)


def data_path(name: str) -> Path:
    """Path of a file in ``lightswe/tasks/data`` (package data)."""
    return Path(str(resources.files("lightswe.tasks").joinpath("data", name)))


def is_name(spec: str | Path) -> bool:
    """Whether ``spec`` names a shipped set (``demo``, ``pool``, ``pool:<anything>``)."""
    text = str(spec)
    return text in ("demo", "pool") or text.startswith("pool:")


def rows(spec: str) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` of a shipped set, for :func:`lightswe.tasks.datasets.load_tasks`; raises
    TaskFormatError (a UserInputError) for an unknown pool split."""
    if spec == "demo":
        yield from _records(data_path(DEMO_FILE))
        return
    split = spec.partition(":")[2]
    if split and split not in POOL_SPLITS:
        raise TaskFormatError(f"--tasks {spec!r}: unknown split {split!r}; expected one of "
                              f"{', '.join(f'pool:{name}' for name in POOL_SPLITS)} or pool (all)")
    wanted = POOL_SPLITS.get(split)
    for where, record in _records(data_path(POOL_FILE)):
        if wanted is None or (record.get("metadata") or {}).get("split") in wanted:
            yield where, record


def _records(path: Path) -> Iterator[tuple[str, dict]]:
    return jsonl_records(path, error=TaskFormatError, short_names=True)


def load_tasks(spec: str | Path) -> list[TaskInstance]:
    """Instances of any ``--tasks`` form, shipped names included: :func:`lightswe.tasks.datasets.load_tasks`."""
    from lightswe.tasks.datasets import load_tasks as load

    return load(spec)


def export_pool(build_out: str | Path, path: str | Path | None = None) -> dict[str, int]:
    """Write the validated instances of a ``lightswe tasks build`` folder as the shipped pool file (sorted by
    id, gzip without a timestamp, so the same build gives the same bytes); returns counts per split.

    Raises ``ValueError`` when an instance lacks the validation the build records (no patch 0.0, gold 1.0)."""
    instances = sorted(read_jsonl(Path(build_out) / "instances.jsonl"), key=lambda i: i.instance_id)
    for instance in instances:
        rewards = instance.metadata.get("validation", {}).get("rewards", {})
        if rewards.get("no_patch") != [0.0] * len(rewards.get("no_patch", [])) or not rewards.get("gold") or \
                set(rewards["gold"]) != {1.0} or instance.metadata.get("split") not in SPLIT_NAMES:
            raise UserInputError(f"{instance.instance_id}: not a validated instance with a split ({rewards})")
    target = Path(path) if path is not None else data_path(POOL_FILE)
    with atomic_file(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
        for instance in instances:
            handle.write((json.dumps(instance.to_dict(), ensure_ascii=False) + "\n").encode())
    counts: dict[str, int] = {}
    for instance in instances:
        counts[instance.metadata["split"]] = counts.get(instance.metadata["split"], 0) + 1
    return counts
