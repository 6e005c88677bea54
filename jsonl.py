"""JSON Lines files, the one reader: task files, shipped pools, datasets, predictions, trajectory segments.

:func:`jsonl_records` yields each record with where it stands (``"FILE:LINE"``, for the caller's messages); a
``.gz`` file is read through gzip; blank lines are skipped; a line that is not JSON raises the caller's error
class, naming the file and line. Where a writer may have been killed mid-line (append-only logs such as
trajectory segments), ``torn_last=True`` skips an invalid *last* line with a warning instead: everything
written before it is kept, and a bad line with records after it is still an error.

Example::

    for where, record in jsonl_records("tasks.jsonl", error=TaskFormatError):
        instance = TaskInstance.from_dict(record, where=where)
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def jsonl_records(path: str | Path, *, error: type[Exception] = ValueError, short_names: bool = False,
                  torn_last: bool = False) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for every non-blank line of ``path`` (``where`` = ``"PATH:LINE"``, 1-based lines;
    ``short_names``: the file's name only, for files shipped inside the package).

    Raises:
        error: a line is not valid JSON (``"PATH:LINE: not valid JSON (...)"``), unless ``torn_last`` and it is
            the last non-blank line (then it is skipped, logged).
        OSError: the file cannot be read (``FileNotFoundError`` when it does not exist).
    """
    path = Path(path)
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name if short_names else path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if torn_last and not any(rest.strip() for rest in handle):
                    log.warning("%s: skipping a torn last record (the writer stopped mid-line)", where)
                    return
                raise error(f"{where}: not valid JSON ({err})") from None
            yield where, record
