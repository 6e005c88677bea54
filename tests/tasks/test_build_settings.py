"""``tasks build`` settings and its report of repositories that end short (no hidden cap)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightswe.errors import UserInputError
from lightswe.tasks.build import BuildConfig, shortfall


@pytest.mark.parametrize("kwargs,match", [
    ({"per_repo": 0}, "--per-repo 0: must be >= 1"), ({"workers": -1}, "--workers -1: must be >= 1"),
    ({"gold_runs": 0}, "--gold-runs 0"), ({"max_attempts": -1}, "--max-attempts -1"),
    ({"per_repo": 5, "max_attempts": 3}, "could never make 5 instances"),
    ({"pool_file": Path("/nonexistent/pool.json")}, "--pool-file"),
], ids=["per-repo", "workers", "gold-runs", "attempts<0", "attempts<per-repo", "pool-file"])
def test_bad_build_settings_are_refused_before_any_work(kwargs, match):
    with pytest.raises(UserInputError, match=match):
        BuildConfig(**kwargs)


def test_the_attempt_cap_is_an_option_and_a_short_repository_says_why():
    assert BuildConfig(per_repo=3).attempts == 12 and BuildConfig(per_repo=3, max_attempts=50).attempts == 50
    assert shortfall(have=3, asked=3, tried=12, attempts=12) is None
    assert "attempt cap (12 mutants tried; raise --max-attempts)" in shortfall(have=2, asked=3, tried=12, attempts=12)
    assert "every mutation site was tried" in shortfall(have=2, asked=3, tried=5, attempts=12)
