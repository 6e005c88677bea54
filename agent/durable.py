"""Crash-safe file helpers shared by the trajectory store and the checkpoints.

A rename is durable only once the directory entry itself is on disk, hence ``fsync_dir`` after ``os.replace``.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (new and renamed files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
