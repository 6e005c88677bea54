"""``lightswe tasks validate``'s options (its own module: the positional FILE needs tyro at import)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro
from lightswe.errors import UserInputError


@dataclass(kw_only=True, slots=True)
class ValidateArgs:
    """Check each task instance in the environment: the tests fail without the patch and pass with the gold
    patch. Tasks: .jsonl, .json (an array), .parquet, a Hugging Face dataset directory[:split], or a dataset
    name from the local cache (owner/name:split[0:50])."""

    # Task instances: a file (.jsonl/.json/.parquet), a dataset directory[:split], or owner/name:split[a:b].
    file: tyro.conf.Positional[str]
    # Gold-patch runs per instance (all must pass).
    gold_runs: int = 2
    # No-patch runs per instance (every FAIL_TO_PASS test must fail and every PASS_TO_PASS test pass in each:
    # a test that passes on the base now and then pays an unchanged tree).
    base_runs: int = 3
    # Progress bar on stderr (instances done, ETA, the image being built).
    progress: bool = True

    def __post_init__(self) -> None:
        from lightswe.tasks.datasets import looks_like_dataset

        if not Path(self.file).is_file() and not looks_like_dataset(self.file):
            raise UserInputError(f"{self.file}: does not exist; fix: pass a task file (.jsonl/.json/.parquet), a "
                                 "dataset directory, or a cached dataset name owner/name:split")
        if self.gold_runs < 1:
            raise UserInputError(f"--gold-runs {self.gold_runs}: must be >= 1; fix: e.g. --gold-runs 2")
        if self.base_runs < 1:
            raise UserInputError(f"--base-runs {self.base_runs}: must be >= 1; fix: e.g. --base-runs 3")
