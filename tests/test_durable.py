"""lightswe.durable.atomic_file, the one atomic writer (trajectory shards, the metrics log, config.json, task
files, build reports)."""

from __future__ import annotations

import pytest
from lightswe.durable import atomic_file


def test_the_block_s_content_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "out.json"  # the folder is made
    with atomic_file(path) as handle:
        handle.write("naïve ✓\n")
    with atomic_file(tmp_path / "raw.bin", "wb") as handle:
        handle.write(b"\x00\x01")
    assert path.read_text(encoding="utf-8") == "naïve ✓\n"
    assert (tmp_path / "raw.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []


@pytest.mark.parametrize("error", [ValueError("unserialisable"), OSError(28, "No space left on device"),
                                   KeyboardInterrupt()], ids=["bad-value", "disk-full", "ctrl-c"])
def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")
    with pytest.raises(type(error)):
        with atomic_file(path) as handle:
            handle.write("half of the new")
            raise error
    assert path.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [path]
