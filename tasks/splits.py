"""Train / held-out test splits by repository and by function.

Why hashes: a split must not depend on which instances happen to exist yet (a resumed or larger build gives
every old instance the same split), and every instance of one function must land on the same side, so that
evaluation never sees a function the policy trained on.

- ``test_repo``: whole repositories held out: the ``round(repo_fraction * N)`` pool repositories (at least
  one, never all: a pool of one repository holds out functions only) with the smallest ``sha256(name)``;
- ``test_function``: in the other repositories, functions whose ``sha256(repo:file:function)`` falls below
  ``function_fraction``;
- ``train``: the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from lightswe.tasks.instance import TaskInstance

TRAIN, TEST_REPO, TEST_FUNCTION = "train", "test_repo", "test_function"


def _unit(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def held_out_repos(repos: Iterable[str], repo_fraction: float = 0.15) -> set[str]:
    repos = sorted(set(repos))
    if not repos or repo_fraction <= 0:
        return set()
    count = min(max(1, round(repo_fraction * len(repos))), len(repos) - 1)  # some repository is left to train on
    return set(sorted(repos, key=lambda r: hashlib.sha256(r.encode()).hexdigest())[:count])


def function_key(instance: TaskInstance) -> str:
    meta = instance.metadata
    return f"{instance.repo}:{meta.get('file', '')}:{meta.get('function', instance.instance_id)}"


def split_of(instance: TaskInstance, test_repos: set[str], function_fraction: float = 0.1) -> str:
    if instance.repo in test_repos:
        return TEST_REPO
    return TEST_FUNCTION if _unit(function_key(instance)) < function_fraction else TRAIN


def assign(instances: list[TaskInstance], test_repos: set[str], function_fraction: float = 0.1) -> dict[str, list]:
    """Split name -> instances (each instance's ``metadata["split"]`` set too)."""
    out: dict[str, list] = {TRAIN: [], TEST_REPO: [], TEST_FUNCTION: []}
    for instance in instances:
        name = split_of(instance, test_repos, function_fraction)
        instance.metadata["split"] = name
        out[name].append(instance)
    train_functions = {function_key(i) for i in out[TRAIN]}
    leaked = [i.instance_id for i in out[TEST_REPO] + out[TEST_FUNCTION] if function_key(i) in train_functions]
    assert not leaked, f"held-out functions appear in train: {leaked[:3]}"
    return out
