"""``lightswe tasks validate``'s options (its own module: the positional FILE needs tyro at import)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro
from lightswe.errors import UserInputError


@dataclass(kw_only=True, slots=True)
class ValidateArgs:
    """Check each instance of a JSONL file (SWE-bench format) in the environment: the tests fail without the
    patch and pass with the gold patch."""

    # JSONL file of task instances.
    file: tyro.conf.Positional[Path]
    # Gold-patch runs per instance (all must pass).
    gold_runs: int = 2
    # Progress bar on stderr (instances done, ETA, the image being built).
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.file.is_file():
            why = "is a directory" if self.file.is_dir() else "does not exist"
            raise UserInputError(f"{self.file}: {why}; fix: pass a JSONL file of task instances")
        if self.gold_runs < 1:
            raise UserInputError(f"--gold-runs {self.gold_runs}: must be >= 1; fix: e.g. --gold-runs 2")
