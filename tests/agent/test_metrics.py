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
