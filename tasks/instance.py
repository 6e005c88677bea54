"""The task record: a SWE-bench instance plus what its image needs.

SWE-bench fields keep their published names (``FAIL_TO_PASS`` ...) so that a SWE-bench JSONL file loads as it
comes. The extra fields say how to build and test the repository offline; they default to what a plain
pytest project needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

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
        """Build from a JSON object; SWE-bench quirks (lists stored as JSON strings) are accepted, and the types
        tables store (a number for ``version``, a timestamp for ``created_at``: :func:`_coerce`); a null is an
        absent field.

        Raises TaskFormatError (one line: ``where``, the field, the fix): a required field missing, a field of
        the wrong type, an empty ``instance_id`` or ``FAIL_TO_PASS``.
        """
        if not isinstance(record, dict):
            raise TaskFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if record.get(name) is None]  # null: absent (a table's empty cell)
        if missing:
            raise TaskFormatError(f"{where}: missing field(s) {missing}; fix: add them (every instance needs "
                                  f"{required})")
        values = {k: v for k, v in record.items() if k in names and v is not None}
        for key in ("FAIL_TO_PASS", "PASS_TO_PASS", "test_files"):
            value = values.get(key)
            if isinstance(value, str):  # SWE-bench on the Hub stores these lists as JSON text
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as err:
                    raise TaskFormatError(f"{where}: field {key!r} is not a JSON list ({err}); fix: a list of test ids "
                                          f"or its JSON text, e.g. [\"tests/test_x.py::test_y\"]") from None
                values[key] = value
            if value is not None and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
                raise TaskFormatError(f"{where}: field {key!r} must be a list of test ids, got {value!r:.80}; fix: "
                                      f"a list of strings or its JSON text, e.g. [\"tests/test_x.py::test_y\"]")
        for f in dataclasses.fields(cls):
            if f.name in values:
                values[f.name] = _coerce(f.name, f.type, values[f.name], where)
        if not values["instance_id"]:
            raise TaskFormatError(f"{where}: field 'instance_id' is empty; fix: a unique id such as owner__repo-123")
        if not values["FAIL_TO_PASS"]:
            raise TaskFormatError(f"{where}: field 'FAIL_TO_PASS' is empty; fix: list the tests that fail before the "
                                  "fix and pass after it (an instance needs one)")
        return cls(**values)


_NUMBER_AS_TEXT = ("version", "python_version")  # SWE-bench's `version` ("3.0") read from a table as 3.0


def _coerce(name: str, kind: str, value, where: str):
    """``value`` of field ``name`` (annotation ``kind``) in its type, or TaskFormatError naming the field.

    The published variants are accepted: a ``version``/``python_version`` stored as a number (its text: ``3.1``,
    so a trailing zero is lost, ``"3.10"`` must stay text), a ``created_at`` stored as a timestamp (ISO 8601 in
    UTC, SWE-bench's ``2023-06-13T17:22:17Z``; a naive one is taken as UTC), ``metadata`` as JSON text.
    """
    if kind == "str":
        if isinstance(value, str):
            return value
        if name in _NUMBER_AS_TEXT and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if name == "created_at" and isinstance(value, datetime.date):
            if not isinstance(value, datetime.datetime):
                return value.isoformat()
            if value.tzinfo is not None:
                value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            return value.isoformat(timespec="seconds") + "Z"
        allowed = {"version": "a string such as \"3.0\" (a number is read as its text)",
                   "python_version": "a string such as \"3.11\"",
                   "created_at": "ISO 8601 text such as \"2023-06-13T17:22:17Z\" (or a timestamp)"}
        raise TaskFormatError(f"{where}: field {name!r} must be a string, got {type(value).__name__} "
                              f"{value!r:.60}; fix: {allowed.get(name, 'a JSON string')}")
    if kind == "dict":
        if isinstance(value, str):
            try:
                value = json.loads(value or "{}")
            except json.JSONDecodeError:
                pass
        if not isinstance(value, dict):
            raise TaskFormatError(f"{where}: field {name!r} must be an object (a JSON dict), got "
                                  f"{type(value).__name__} {value!r:.60}; fix: {{}} or leave the field out")
    return value


def read_jsonl(path: str | Path) -> list[TaskInstance]:
    """Load instances from JSONL, plain or gzipped (``.gz``): lightswe's own or SWE-bench's as published."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[TaskInstance]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist; build one with `lightswe tasks build`")
    for where, record in jsonl_records(path, error=TaskFormatError):  # a shipped or downloaded file may be .gz
        yield TaskInstance.from_dict(record, where=where)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """An open file (``mode`` ``"w"``: text, UTF-8; ``"wb"``: bytes) whose content replaces ``path`` in one
    rename when the block ends; an error in the block leaves ``path`` as it was and no temporary file behind
    (an unserialisable field, a full disk). A kill leaves at most ``<name>.tmp``, never a half-written ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(instances: Iterable[TaskInstance], path: str | Path) -> None:
    """Write atomically (:func:`atomic_file`): a crash leaves the old file, never a half-written one."""
    with atomic_file(path) as handle:
        for instance in instances:
            handle.write(json.dumps(instance.to_dict(), ensure_ascii=False) + "\n")
