"""A real ``lightswe train`` killed (SIGKILL) after a checkpoint and run again into the same folder: its logs go on
without duplicates or gaps. metrics.jsonl and TensorBoard hold each step once (the steps the killed attempt logged
after its checkpoint are dropped and logged again, read back with TensorBoard's own reader), and the offline W&B
run (``WANDB_MODE=offline``) is continued under the same id after the last step its files hold: over both
attempts' files every step once, with metrics.jsonl's values.

Before the fix, the resumed W&B run logged the redone steps again from the checkpoint (a second row for a step
the killed attempt had flushed, which ``wandb sync`` would upload twice), and the steps the killed process had not
flushed (W&B writes its file every 15 s) stayed missing if they were at or before the checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest
from lightswe.agent.metrics import read_metrics

from lightswe.agent.wandb_files import history, run_files

pytestmark = [pytest.mark.docker, pytest.mark.slow,  # about 90 s; test_metrics.py checks the same logic in seconds
              pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="pip install 'lightswe[wandb]'")]


def _train(run, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lightswe", "train", "--out", str(run), "--steps", "4", "--checkpoint-every", "2",
            "--tasks-per-step", "2", "--group-size", "2", "--concurrency", "2", "--eval-tasks", "",
            "--warm-start-steps", "0", "--no-progress", "--log.wandb", *extra]


def _kill_after_step(argv: list[str], run, step: int, env: dict, timeout: float = 300) -> None:
    """Start ``argv``; SIGKILL it (the trainer alone: W&B's service writes what it was sent) once metrics.jsonl
    holds ``step``."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            path = run / "metrics.jsonl"
            if path.exists() and any(r["step"] == step for r in read_metrics(path)):
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_a_run_killed_after_its_checkpoint_resumes_every_log_without_duplicates_or_gaps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    _kill_after_step(_train(run), run, 3, env)  # checkpoint at step 2, step 3 logged, then killed
    assert (run / "checkpoints" / "step-000002").is_dir() and not (run / "checkpoints" / "step-000004").exists()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    first_id = (run / "wandb_id").read_text().strip()

    done = subprocess.run(_train(run), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step 2" in done.stdout

    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # step 3 once: the killed attempt's row was dropped

    tb = EventAccumulator(str(run / "tb"))
    tb.Reload()
    for tag in ("rollout/success_rate", "rollout/episodes", "timing/rollout_seconds"):
        events = tb.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3, 4], tag  # the killed attempt's step 3 purged
        assert [e.value for e in events][-2:] == pytest.approx([rows[2][tag.split("/")[1]], rows[3][tag.split("/")[1]]])

    assert (run / "wandb_id").read_text().split() == [first_id]  # the same W&B run
    files = run_files(run, first_id)
    assert len(files) == 2, files  # one offline run per attempt, both with the run's one id
    held = [history(f) for f in files]
    steps = [[row["_step"] for row in rows] for rows in held]
    assert sorted(steps[0] + steps[1]) == [1, 2, 3, 4], steps  # no step twice (no rewind), none missing
    assert all(s == sorted(s) for s in steps) and steps[1][-1] == 4
    by_step = {row["_step"]: row for rows in held for row in rows}
    for row in rows_of(run):
        assert by_step[row["step"]]["rollout/success_rate"] == pytest.approx(row["success_rate"])
        assert by_step[row["step"]]["rollout/episodes"] == row["episodes"]


def rows_of(run) -> list[dict]:
    return read_metrics(run / "metrics.jsonl")
