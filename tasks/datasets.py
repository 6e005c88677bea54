"""Load task instances from any published form: the one entry point of every command that takes ``--tasks``.

``load_tasks(spec)`` accepts (an optional ``[start:stop]`` slice after any of them)::

    tasks.jsonl                          # JSON lines (lightswe's own, SWE-bench's as published; or .jsonl.gz)
    demo, pool, pool:train, pool:test    # the sets shipped in the package (lightswe.tasks.shipped)
    tasks.json                           # a JSON array of rows
    tasks.parquet                        # a Parquet table (the Hugging Face Hub's storage format)
    path/to/dataset_dir[:split]          # a Hugging Face `datasets` directory (save_to_disk) or data files
    princeton-nlp/SWE-bench_Lite:test[0:50]   # a Hub dataset by name, from the local Hugging Face cache only

Rows keep their published names and quirks: ``FAIL_TO_PASS``/``PASS_TO_PASS`` stored as JSON text, extra
fields ignored. Family-specific rows are normalised here, once:

- **SWE-smith** rows (``image_name``, ``patch`` = the bug, no ``base_commit``): the bug becomes
  ``metadata["bug_patch"]``, the fix (``patch``) is the bug reversed, the base is the source commit plus the
  bug (replayed by :func:`lightswe.tasks.sources.base_repo`); ``repo`` ``swesmith/<owner>__<name>.<commit>``
  gives ``owner/name`` and the source commit.
- **SWE-bench family** rows without ``install_command``/``test_command`` take them (and ``python_version``
  and the log parser) from the ``swebench`` package's per-repository, per-version specs
  (:mod:`lightswe.tasks.specs`; optional extra ``pip install 'lightswe[swebench]'``).

Hub datasets are read offline (``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``): a name that is not in the local
cache is an error naming the fix (download it once where the Hub is reachable, or pass a local directory).
Errors are :class:`~lightswe.tasks.instance.TaskFormatError` (a ``UserInputError``) naming the source and row.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from lightswe.jsonl import jsonl_records
from lightswe.tasks.instance import TaskFormatError, TaskInstance
from lightswe.tasks.patches import PatchError, reverse_patch

_SLICE = re.compile(r"^(.*?)\[(-?\d*):(-?\d*)\]$")
_SWESMITH_REPO = re.compile(r"^(?:[^/]+/)?([^/_]+(?:_[^/_]+)*?)__([^/]+?)\.([0-9a-f]{7,40})$")
_INSTALL_HINT = "install the optional extra: pip install 'lightswe[hf]' (Hugging Face datasets)"


def load_tasks(spec: str | Path) -> list[TaskInstance]:
    """Every task instance of ``spec`` (see the module docstring for the forms), in order.

    Raises TaskFormatError (bad rows, unknown form) or FileNotFoundError (a path that does not exist and is
    not a dataset name).
    """
    text = str(spec)
    start = stop = None
    match = _SLICE.match(text)
    if match and not Path(text).exists():
        text, start, stop = match.group(1), _int(match.group(2)), _int(match.group(3))
    elif text.endswith("]") and "[" in text and not Path(text).exists():
        raise TaskFormatError(f"{text}: bad slice {text[text.rindex('['):]}; fix: [start:stop] with whole numbers "
                              f"(either may be left out), e.g. {text[:text.rindex('[')]}[0:50]")
    rows = list(_rows(text))
    if (start is not None or stop is not None) and rows:
        total, rows = len(rows), rows[slice(start, stop)]
        if not rows:
            raise TaskFormatError(f"{spec}: the slice [{match.group(2)}:{match.group(3)}] selects none of the "
                                  f"{total} rows of {text}; fix: a slice within [0:{total}] (Python slicing: "
                                  f"start < stop, negative counts from the end)")
    out, seen = [], {}
    for where, record in rows:
        instance = from_record(record, where=where)
        if instance.instance_id in seen:
            raise TaskFormatError(f"{where}: instance_id {instance.instance_id!r} appears twice (first at "
                                  f"{seen[instance.instance_id]}); fix: ids must be unique, drop or rename one")
        seen[instance.instance_id] = where
        out.append(instance)
    if not out:
        raise TaskFormatError(f"{spec}: no task instances (an empty file or split); fix: give one with at least "
                              "one row")
    return out


def _int(text: str) -> int | None:
    return int(text) if text not in ("", None) else None


def _rows(text: str) -> Iterable[tuple[str, dict]]:
    from lightswe.tasks import shipped

    path = Path(text)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson") or path.name.lower().endswith((".jsonl.gz", ".ndjson.gz")):
            return jsonl_records(path, error=TaskFormatError)
        if suffix == ".json":
            return _json_rows(path)
        if suffix == ".parquet":
            return _parquet_rows(path)
        raise TaskFormatError(f"{path}: unknown task file type {suffix!r}; fix: use .jsonl, .json (an array), "
                              ".parquet, or a Hugging Face dataset directory")
    if shipped.is_name(text):  # demo, pool, pool:train, pool:test (tasks/data)
        return shipped.rows(text)
    base, _, split = text.rpartition(":") if ":" in text else (text, "", "")
    if Path(text).is_dir():
        return _hf_rows(text, None, local=True)
    if base and Path(base).is_dir():
        return _hf_rows(base, split, local=True)
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+(:[\w.\-]+)?", text) and not text.endswith((".jsonl", ".json", ".parquet")):
        return _hf_rows(base, split or None, local=False)
    raise FileNotFoundError(f"task source {text!r} is neither a file, a dataset directory, a dataset name "
                            f"'owner/name[:split]', nor a shipped set ({', '.join(shipped.NAMES)}); fix: check the "
                            "path")


def looks_like_dataset(spec: str) -> bool:
    """Whether ``spec`` (not a plain file) is one of the other forms :func:`load_tasks` reads: a file with a
    slice (``rows.jsonl[0:50]``), a shipped set, a dataset directory or a Hub name ``owner/name[:split][slice]``."""
    from lightswe.tasks import shipped

    text = _SLICE.sub(r"\1", str(spec)) if _SLICE.match(str(spec)) else str(spec)
    base = text.rpartition(":")[0] if ":" in text else text
    return shipped.is_name(text) or Path(text).is_file() or Path(text).is_dir() or Path(base).is_dir() or bool(
        re.fullmatch(r"[\w.\-]+/[\w.\-]+(:[\w.\-]+)?", text))


def _json_rows(path: Path) -> Iterable[tuple[str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TaskFormatError(f"{path}: not valid JSON ({err}); fix: a .json task file holds one array of rows, "
                              "a .jsonl file one row per line") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise TaskFormatError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    return ((f"{path}[{i}]", row) for i, row in enumerate(data))


def _parquet_rows(path: Path) -> Iterable[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskFormatError(f"{path}: reading Parquet needs pyarrow; fix: pip install 'lightswe[parquet]'") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError; a damaged file an OSError
        raise TaskFormatError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0][:200]}); fix: "
                              "write it with pyarrow/pandas/datasets (to_parquet), or give the rows as .jsonl or "
                              ".json") from None
    return ((f"{path} row {i}", row) for i, row in enumerate(table.to_pylist()))


def _offline_datasets():
    """The ``datasets`` module with the Hub switched off (environment set before its first import)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise TaskFormatError(f"loading a Hugging Face dataset needs the `datasets` package; fix: {_INSTALL_HINT}") \
            from None
    import huggingface_hub.constants as hub_constants

    datasets.config.HF_HUB_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    return datasets


def _hf_rows(name: str, split: str | None, *, local: bool) -> Iterable[tuple[str, dict]]:
    datasets = _offline_datasets()
    path = Path(name)
    try:
        if local and any((path / marker).is_file() for marker in ("dataset_info.json", "state.json",
                                                                 "dataset_dict.json")):
            data = datasets.load_from_disk(str(path))
        elif local:
            data = datasets.load_dataset(str(path), split=split)
        else:
            data = _cached_dataset(datasets, name, split)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        known = re.search(r"Unknown split \"[^\"]*\"\. Should be one of \[([^\]]*)\]", str(err))
        if known:
            names = [n.strip(" '\"") for n in known.group(1).split(",") if n.strip()]
            raise TaskFormatError(f"dataset {name!r} has no split {split!r}; fix: one of its splits, "
                                  f"{', '.join(f'{name}:{n}' for n in names)}") from None
        where = "directory" if local else "local Hugging Face cache"
        fix = ("pass a directory written by datasets' save_to_disk or holding the dataset's data files, or a "
               ".jsonl/.json/.parquet file" if local else "download it once where the Hub is reachable "
               "(datasets.load_dataset(name)) or pass a local directory or file")
        split_text = f" (split {split!r})" if split else ""
        raise TaskFormatError(f"dataset {name!r}{split_text} cannot be loaded from the {where}: "
                              f"{str(err).splitlines()[0][:300]}; fix: {fix}") from None
    if isinstance(data, datasets.DatasetDict):
        if split is None:
            if len(data) != 1:
                raise TaskFormatError(f"dataset {name!r} has splits {sorted(data)}; fix: name one, e.g. "
                                      f"{name}:{sorted(data)[0]}")
            split = next(iter(data))
        if split not in data:
            raise TaskFormatError(f"dataset {name!r} has no split {split!r}; fix: one of its splits, "
                                  f"{', '.join(f'{name}:{s}' for s in sorted(data))}")
        data = data[split]
    return ((f"{name}:{split or ''} row {i}", row) for i, row in enumerate(data))


def _cached_dataset(datasets, name: str, split: str | None):
    """Hub dataset ``name`` from this machine only: the ``datasets`` cache that ``load_dataset`` leaves, else
    the Hub repository files that ``huggingface-cli download --repo-type dataset`` / ``snapshot_download``
    leave in the hub cache (read as a data-files directory). The first error is raised when neither has it."""
    try:
        return datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ConnectionError, ValueError) as first:
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(name, repo_type="dataset", local_files_only=True)
        except (OSError, ValueError):  # LocalEntryNotFoundError is an OSError; a bad repo id a ValueError
            raise first from None
        return datasets.load_dataset(folder, split=split)


def is_swesmith(record: dict) -> bool:
    """A SWE-smith row: the bug as ``patch``, no ``base_commit``, and a SWE-smith ``repo``
    (``swesmith/<owner>__<name>.<commit>``) or image (``.../swesmith.x86_64...``). Any other row without
    ``base_commit`` (a SWE-bench row with an ``image_name`` added) is a row missing that field."""
    return "base_commit" not in record and "patch" in record and bool(
        _SWESMITH_REPO.match(str(record.get("repo", ""))) or "swesmith" in str(record.get("image_name", "")).lower())


def from_record(record: dict, *, where: str = "record") -> TaskInstance:
    """One published row -> TaskInstance (SWE-smith and spec-derived commands normalised, see module doc)."""
    if not isinstance(record, dict):
        raise TaskFormatError(f"{where}: expected a row (JSON object), got {type(record).__name__}")
    record = {k: v for k, v in record.items() if v is not None}  # a table's null cell is an absent field
    if isinstance(record.get("metadata"), dict):  # a table's struct column gives every row every key, null-filled
        record["metadata"] = _without_nulls(record["metadata"])
    if is_swesmith(record):
        record = _from_swesmith(record, where)
    record.setdefault("problem_statement", "")
    explicit = {key for key in ("install_command", "test_command", "python_version", "log_parser")
                if record.get(key)}
    instance = TaskInstance.from_dict(record, where=where)
    if explicit < {"install_command", "test_command"} and not instance.image_name:
        from lightswe.tasks import specs

        specs.apply_specs(instance, keep=explicit, where=where)
    elif instance.image_name and "test_command" not in explicit:
        from lightswe.tasks import specs

        specs.apply_specs(instance, keep=explicit | {"install_command"}, where=where)
    return instance


def _without_nulls(value):
    """``value`` with the null-valued keys of its dicts removed, at every depth."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _from_swesmith(record: dict, where: str) -> dict:
    bug = record.get("patch") or ""
    try:
        record["patch"] = reverse_patch(bug)
    except PatchError as err:
        raise TaskFormatError(f"{where}: {err}") from None
    metadata = dict(record.get("metadata") or {})
    metadata["bug_patch"] = bug
    repo = str(record.get("repo", ""))
    match = _SWESMITH_REPO.match(repo)
    if match:
        metadata["swesmith_repo"] = repo
        record["repo"] = f"{match.group(1)}/{match.group(2)}"
        record.setdefault("environment_setup_commit", match.group(3))
    record["metadata"] = metadata
    record["base_commit"] = ""  # the source commit plus the bug (replayed, see sources.base_repo)
    return record
