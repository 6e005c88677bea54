"""Metrics sinks: grouped TensorBoard tags and hparams (read back with TensorBoard's own reader), a W&B run
written offline, and curves without wasted panels."""

from __future__ import annotations

import importlib.util
import re

import pytest
from lightswe.agent.metrics import LogConfig, MetricsLog, curve_panels, plot_curves, read_metrics, tag_of


@pytest.mark.parametrize("key,tag", [("success_rate", "rollout/success_rate"), ("draws", "rollout/draws"),
                                     ("eval_success_rate", "eval/success_rate"), ("loss", "train/loss"),
                                     ("lr", "train/lr"), ("rollout_seconds", "timing/rollout_seconds"),
                                     ("update_seconds", "timing/update_seconds"),
                                     ("warm_start_loss_last", "warm_start/loss_last")])
def test_tags_are_grouped_by_source(key, tag):
    assert tag_of(key) == tag


def test_tensorboard_gets_grouped_scalars_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path, hparams={"learner.lr": 0.003, "loss": "cispo", "learner.betas": [0.9, 0.95]})
    for step in range(3):
        log.write(step=step, metrics={"success_rate": step / 4, "loss": 1.0 / (step + 1), "eval_success_rate": 0.5,
                                      "rollout_seconds": 3.0})
    log.close()
    runs = list((tmp_path / "tb").iterdir())
    assert len(runs) == 1  # the hparams live in the scalars' own event file, not a second run
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"rollout/success_rate", "train/loss", "eval/success_rate",
                                          "timing/rollout_seconds"}
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    session = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"learner.lr" in session and b"cispo" in session


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="pip install 'lightswe[wandb]'")
def test_wandb_logger_writes_an_offline_run_and_resumes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for first in (0, 2):  # a resumed run continues the same W&B run
        log = MetricsLog(tmp_path, hparams={"learner.lr": 0.003}, logger=LogConfig(tensorboard=False, wandb=True))
        for step in (first, first + 1):
            log.write(step=step, metrics={"success_rate": 0.25 * step, "loss": 0.1})
        log.close()
    run_id = (tmp_path / "wandb_id").read_text().strip()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>; wandb appends -1 when both runs start in the same second
    assert len(runs) == 2 and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", r.name) for r in runs)
    assert all(list(r.glob(f"run-{run_id}.wandb")) for r in runs)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]


def test_curves_leave_out_flat_and_duplicate_panels(tmp_path):
    rows = [{"step": 0, "eval_success_rate": 0.1, "eval_reward_mean": 0.1},
            *({"step": s, "success_rate": s / 4, "reward_mean": s / 4, "clip_fraction": 0.0, "loss": 1 / s,
               "entropy": None} for s in (1, 2, 3)),
            {"step": 3, "eval_success_rate": 0.6, "eval_reward_mean": 0.6}]
    keys = ("success_rate", "eval_success_rate", "reward_mean", "loss", "clip_fraction", "entropy")
    # reward == success for 0/1 rewards, clip fraction flat at 0, entropy never logged; held-out success overlaid
    assert curve_panels(rows, keys) == [["success_rate", "eval_success_rate"], ["loss"]]
    log = MetricsLog(tmp_path, tensorboard=False)
    for row in rows:
        log.write(step=row["step"], metrics={k: v for k, v in row.items() if k != "step"})
    log.close()
    png = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png", keys=keys)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


KILLED_ATTEMPT = """
import os, signal, sys
from lightswe.agent.metrics import LogConfig, MetricsLog
log = MetricsLog(sys.argv[1], logger=LogConfig(tensorboard=True, wandb=True), purge_step=0)
for step in (1, 2, 3):
    log.write(step=step, metrics={"success_rate": step / 10, "loss": 1.0})
os.kill(os.getpid(), signal.SIGKILL)  # W&B flushes its file every 15 s: what it had not written is lost
"""


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="pip install 'lightswe[wandb]'")
def test_a_resumed_log_holds_each_step_once_in_every_sink(tmp_path, monkeypatch):
    """A process logging steps 1-3 is killed; the run resumes from its checkpoint at step 2 (purge_step=3) and logs
    steps 3-4: metrics.jsonl and TensorBoard hold 1-4 once each (step 3 with the new values), the W&B run (same id)
    holds each of 1-4 once over both attempts' offline files (the lost steps come from metrics.jsonl), and a fresh
    start (purge_step=0) begins a new W&B run. The end-to-end run: test_train_resume_logs.py (slow)."""
    import os
    import subprocess
    import sys

    from lightswe.agent.wandb_files import history, run_files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # its own W&B service, as a real run's
    killed = subprocess.run([sys.executable, "-c", KILLED_ATTEMPT, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_id = (tmp_path / "wandb_id").read_text().strip()
    log = MetricsLog(tmp_path, logger=LogConfig(wandb=True), purge_step=3)
    for step in (3, 4):
        log.write(step=step, metrics={"success_rate": step / 100, "loss": 2.0})
    log.close()

    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["success_rate"]) for r in rows] == [(1, 0.1), (2, 0.2), (3, 0.03), (4, 0.04)]
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("rollout/success_rate")] == \
        [(1, 0.1), (2, 0.2), (3, 0.03), (4, 0.04)]
    files = run_files(tmp_path, run_id)
    steps = [[row["_step"] for row in history(f)] for f in files]
    assert len(files) == 2 and sorted(steps[0] + steps[1]) == [1, 2, 3, 4], steps  # each once, none missing
    values = {row["_step"]: row["rollout/success_rate"] for f in files for row in history(f)}
    assert all(values[r["step"]] == pytest.approx(r["success_rate"]) for r in rows if r["step"] not in steps[0])

    MetricsLog(tmp_path, logger=LogConfig(tensorboard=False, wandb=True), purge_step=0).close()  # a fresh start
    assert (tmp_path / "wandb_id").read_text().strip() != run_id and read_metrics(tmp_path / "metrics.jsonl") == []
