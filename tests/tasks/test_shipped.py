"""The task sets shipped in the package (``demo``, ``pool``, ``pool:<split>``): they load by name, hold only
validated instances with sound splits, and a sample validates again from scratch in the real environment."""

from __future__ import annotations

import json

import pytest
from lightswe.tasks import load_tasks
from lightswe.tasks.pool import load_pool
from lightswe.tasks.shipped import NAMES, POOL_FILE, data_path, export_pool
from lightswe.tasks.splits import function_key
from lightswe.tasks.validate import Validator


@pytest.fixture(scope="module")
def pool():
    return load_tasks("pool")


def test_every_shipped_name_loads(pool):
    counts = {name: len(load_tasks(name)) for name in NAMES}
    assert counts["demo"] == 1 and counts["pool"] == len(pool) > 0
    assert counts["pool:train"] + counts["pool:test"] == counts["pool"]
    assert counts["pool:test_repo"] + counts["pool:test_function"] == counts["pool:test"]
    assert counts["pool:train"] > 0 and counts["pool:test"] > 0


def test_the_pool_holds_validated_instances_of_the_pinned_libraries(pool):
    pinned = {spec.repo: spec.source for spec in load_pool().values()}
    assert len({i.instance_id for i in pool}) == len(pool)
    for instance in pool:
        assert pinned[instance.repo] == instance.source  # images are built from the pinned sdist
        assert instance.metadata["validation"]["rewards"]["no_patch"] == [0.0]
        assert set(instance.metadata["validation"]["rewards"]["gold"]) == {1.0}
        assert instance.FAIL_TO_PASS and instance.patch.startswith("diff --git a/")


def test_held_out_splits_share_no_repository_or_function_with_train():
    train, test_repo, test_function = (load_tasks(f"pool:{s}") for s in ("train", "test_repo", "test_function"))
    assert not {i.repo for i in test_repo} & {i.repo for i in train + test_function}
    assert not {function_key(i) for i in train} & {function_key(i) for i in test_repo + test_function}


def test_unknown_names_say_what_exists(tmp_path):
    with pytest.raises(ValueError, match=r"unknown split 'dev'; expected one of pool:train, pool:test"):
        load_tasks("pool:dev")
    with pytest.raises(FileNotFoundError, match=r"nor a shipped set \(demo, pool, pool:train"):
        load_tasks(tmp_path / "nope.jsonl")


def test_export_is_reproducible_and_refuses_unvalidated(tmp_path, pool):
    build = tmp_path / "build"
    build.mkdir()
    lines = [json.dumps(i.to_dict()) for i in pool[:3]]
    (build / "instances.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    assert sum(export_pool(build, tmp_path / "a.jsonl.gz").values()) == 3
    export_pool(build, tmp_path / "b.jsonl.gz")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert [i.instance_id for i in load_tasks(tmp_path / "a.jsonl.gz")] == sorted(i.instance_id for i in pool[:3])
    record = pool[0].to_dict()
    record["metadata"] = {**record["metadata"], "validation": {"rewards": {"no_patch": [0.0], "gold": [0.0]}}}
    (build / "instances.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="not a validated instance"):
        export_pool(build, tmp_path / "c.jsonl.gz")
    assert data_path(POOL_FILE).is_file()


def sample(pool) -> list:
    """One train and one held-out instance, each the quickest to grade of its split (fewest tests)."""
    picked = []
    for split in (("train",), ("test_repo", "test_function")):
        candidates = [i for i in pool if i.metadata["split"] in split]
        picked.append(min(candidates, key=lambda i: (len(i.PASS_TO_PASS), i.instance_id)))
    return picked


@pytest.mark.docker
def test_a_sample_validates_again_in_the_environment(pool):
    """No patch 0.0 and gold patch 1.0 through lightswe/SWE-v0, images built from the pinned sdists if absent."""
    validator = Validator(gold_runs=1, base_runs=1)
    for instance in sample(pool):
        result = validator.validate(instance)
        assert result.ok, (instance.instance_id, result.reason)
        assert result.rewards == {"no_patch": [0.0], "gold": [1.0]}
