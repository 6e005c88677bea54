"""Splits hold out whole repositories and whole functions, stably."""

from __future__ import annotations

from lightswe.tasks.instance import TaskInstance
from lightswe.tasks.splits import TEST_FUNCTION, TEST_REPO, TRAIN, assign, function_key, held_out_repos


def make(repo: str, function: str, n: int) -> TaskInstance:
    return TaskInstance(instance_id=f"{repo}-{function}-{n}", repo=repo, base_commit="x", patch="p",
                        problem_statement="s", FAIL_TO_PASS=["t"],
                        metadata={"file": "m.py", "function": function})


def test_split_by_repository_and_function():
    repos = [f"pypi/lib{i}" for i in range(12)]
    held = held_out_repos(repos)
    assert 1 <= len(held) <= 3 and held == held_out_repos(list(reversed(repos)))  # order-independent
    instances = [make(r, f"f{j}", n) for r in repos for j in range(30) for n in range(2)]
    out = assign(instances, held)
    assert all(i.repo in held for i in out[TEST_REPO])
    assert not {i.repo for i in out[TRAIN]} & held
    assert out[TEST_FUNCTION], "some functions of training repositories are held out"
    train_functions = {function_key(i) for i in out[TRAIN]}
    assert not train_functions & {function_key(i) for i in out[TEST_FUNCTION] + out[TEST_REPO]}
    # stable: an instance's split does not depend on the others
    again = assign([make("pypi/lib3", "f7", 9)], held)
    side = next(k for k, v in again.items() if v)
    assert side == next(i.metadata["split"] for i in instances if function_key(i) == "pypi/lib3:m.py:f7")
