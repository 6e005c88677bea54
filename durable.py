"""Crash-safe file helpers: ``atomic_file``, the one way to write a file whole or not at all (trajectory shards,
the metrics log's rewrite on resume, config.json, task files, the shipped pool export, build reports), and
``fsync_dir`` (the checkpoints' directory renames and the store's new segments).

A rename is durable only once the directory entry itself is on disk, hence ``fsync_dir`` after ``os.replace``.

Example::

    with atomic_file("out/report.json") as handle:
        handle.write(text)          # out/report.json is the old file or the whole new one, never half of it
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (new and renamed files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """An open file (``mode`` ``"w"``: text, UTF-8; ``"wb"``: bytes) whose content replaces ``path`` in one
    rename when the block ends, on disk (the file fsynced before the rename, its folder after); an error in the
    block (an unserialisable field, a full disk, Ctrl-C) leaves ``path`` as it was and no temporary file behind.
    A kill leaves at most ``<name>.tmp``, never a half-written ``path``. Raises what the block or the disk raises
    (``OSError``: the caller names the file and the fix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
