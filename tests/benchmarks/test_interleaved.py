"""``benchmarks/interleaved.py``: the one ``--compare`` loop of the benchmark scripts, on real subprocesses."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
_spec = importlib.util.spec_from_file_location("interleaved", BENCHMARKS / "interleaved.py")
interleaved = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(interleaved)

# a stand-in benchmark: logs each run's order, prints its PYTHONPATH and arguments as JSON on its last line
SCRIPT = """
import json, os, sys
with open(sys.argv[0] + ".log", "a") as log:
    log.write(os.environ["PYTHONPATH"] + " " + " ".join(sys.argv[1:]) + "\\n")
print("some progress")
if "--fail" in sys.argv:
    print("boom", file=sys.stderr)
    sys.exit(3)
print(json.dumps({"path": os.environ["PYTHONPATH"], "argv": sys.argv[1:]}))
"""


@pytest.fixture
def script(tmp_path, monkeypatch):
    path = tmp_path / "bench.py"
    path.write_text(SCRIPT)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "new"))
    return path


def test_rounds_alternate_old_and_new_per_setting(script, tmp_path):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    runs = interleaved.run_interleaved(str(script), [["--c", "1"], ["--c", "4"]], old=old, rounds=3)
    order = Path(str(script) + ".log").read_text().splitlines()
    expected = []
    for first, second in ((old, new), (new, old), (old, new)):
        for c in ("1", "4"):
            expected += [f"{first} --json --c {c}", f"{second} --json --c {c}"]
    assert order == expected
    assert [r["path"] for r in runs[1]["old"]] == [old] * 3 and [r["path"] for r in runs[1]["new"]] == [new] * 3
    assert all(r["argv"] == ["--json", "--c", "4"] for r in runs[1]["old"] + runs[1]["new"])
    assert interleaved.python_paths(old) == {"old": old, "new": new}


def test_a_failed_run_ends_with_its_stderr(script, tmp_path):
    with pytest.raises(SystemExit, match=r"the old run of --fail failed \(exit 3\):\nboom"):
        interleaved.run_interleaved(str(script), [["--fail"]], old=str(tmp_path), rounds=1)


@pytest.mark.parametrize("name", ["rollout.py", "sandbox.py"])
def test_the_benchmark_scripts_take_the_shared_options(name):
    """Both scripts parse --compare/--rounds through the helper (--rounds 0 is refused there, before any run)."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), "--compare", "/nowhere", "--rounds", "0"],
                          capture_output=True, text=True, env=os.environ, timeout=120, check=False)
    assert done.returncode == 1 and "--rounds 0: must be >= 1" in done.stderr, done.stderr[-2000:]
