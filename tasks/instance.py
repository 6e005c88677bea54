"""The task record: a SWE-bench instance plus what its image needs.

SWE-bench fields keep their published names (``FAIL_TO_PASS`` ...) so that a SWE-bench JSONL file loads as it
comes. The extra fields say how to build and test the repository offline; they default to what a plain
pytest project needs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lightswe.errors import UserInputError
from lightswe.jsonl import jsonl_records


class TaskFormatError(UserInputError):
    """A task record that cannot be used: names the file, line and field, and the fix."""


@dataclass(kw_only=True, slots=True)
class TaskInstance:
    # SWE-bench fields
    instance_id: str
    repo: str  # "owner/name" for git hosts, "pypi/<name>" for a source distribution
    base_commit: str
    patch: str  # the fix (gold patch), never shown to the agent
    test_patch: str = ""  # tests added or changed with the fix, applied before grading
    problem_statement: str
    FAIL_TO_PASS: list[str]  # pytest node ids that fail before the fix and pass after
    PASS_TO_PASS: list[str] = field(default_factory=list)  # node ids that pass both before and after
    version: str = ""
    environment_setup_commit: str = ""
    hints_text: str = ""
    created_at: str = ""
    # What the image and the grader need (lightswe additions)
    source: str = ""  # "pypi:<name>==<version>", a git URL, or a local path; "" means https://github.com/{repo}
    python_version: str = "3.11"
    install_command: str = "python -m pip install -e ."
    test_command: str = "python -m pytest -p no:cacheprovider"
    test_files: list[str] = field(default_factory=list)  # restored from the task before grading
    image_name: str = ""  # a prebuilt image holding the repository at /testbed (SWE-smith, SWE-Gym, sweb.eval.*)
    log_parser: str = ""  # "" = pytest's JUnit XML; else the `swebench` log parser of that repo ("django/django")
    metadata: dict = field(default_factory=dict)  # synthesizer facts: mutation kind, function, split, ...

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict, *, where: str = "record") -> TaskInstance:
        """Build from a JSON object; SWE-bench quirks (lists stored as JSON strings) are accepted."""
        if not isinstance(record, dict):
            raise TaskFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in record]
        if missing:
            raise TaskFormatError(f"{where}: missing field(s) {missing}; every instance needs {required}")
        values = {k: v for k, v in record.items() if k in names}
        for key in ("FAIL_TO_PASS", "PASS_TO_PASS", "test_files"):
            value = values.get(key)
            if isinstance(value, str):  # SWE-bench on the Hub stores these lists as JSON text
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as err:
                    raise TaskFormatError(f"{where}: field {key!r} is not a JSON list ({err})") from None
                values[key] = value
            if value is not None and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
                raise TaskFormatError(f"{where}: field {key!r} must be a list of test ids, got {value!r:.80}")
        for key in ("instance_id", "repo", "base_commit", "patch", "problem_statement"):
            if not isinstance(values[key], str):
                raise TaskFormatError(f"{where}: field {key!r} must be a string, got {type(values[key]).__name__}")
        if not values["instance_id"]:
            raise TaskFormatError(f"{where}: field 'instance_id' is empty")
        if not values["FAIL_TO_PASS"]:
            raise TaskFormatError(f"{where}: field 'FAIL_TO_PASS' is empty; an instance needs a failing test")
        return cls(**values)


def read_jsonl(path: str | Path) -> list[TaskInstance]:
    """Load instances from JSONL, plain or gzipped (``.gz``): lightswe's own or SWE-bench's as published."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[TaskInstance]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist; build one with `lightswe tasks build`")
    for where, record in jsonl_records(path, error=TaskFormatError):  # a shipped or downloaded file may be .gz
        yield TaskInstance.from_dict(record, where=where)


def write_jsonl(instances: Iterable[TaskInstance], path: str | Path) -> None:
    """Write atomically: a crash leaves the old file, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for instance in instances:
            handle.write(json.dumps(instance.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)
