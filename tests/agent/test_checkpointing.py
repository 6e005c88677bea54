"""Checkpoints: atomic writes, the latest pointer, exact resume of weights, AdamW moments and RNG."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from lightswe.agent.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from lightswe.agent.metrics import MetricsLog, plot_curves, read_metrics
from torch import nn


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-15)
    return model, opt


def _train_step(model, opt):
    x = torch.randn(4, 8)  # draws from the global RNG: resume must restore it
    noise = random.random() + float(np.random.rand())
    loss = (model(x) - noise).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_resume_reproduces_next_step_exactly(tmp_path):
    model, opt = _setup()
    for _ in range(3):
        _train_step(model, opt)
    save_checkpoint(tmp_path, step=3, model=model, optimizer=opt, state={"cursor": 12})
    expected_loss = _train_step(model, opt)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2 = _setup(seed=123)  # different init and RNG: everything must come from the checkpoint
    state = load_checkpoint(tmp_path, model=model2, optimizer=opt2)
    assert state == {"step": 3, "cursor": 12}
    assert _train_step(model2, opt2) == expected_loss
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_atomic_layout_latest_pointer_and_retention(tmp_path):
    model, opt = _setup()
    (tmp_path / ".tmp-step-000009-1").mkdir(parents=True)  # a crashed write: ignored, then cleaned up
    assert latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step=step, model=model, optimizer=opt, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latest", "step-000002", "step-000003"]
    assert latest_checkpoint(tmp_path).name == "step-000003"
    # a directory without state.json (incomplete) is never chosen
    os.remove(tmp_path / "latest")
    (tmp_path / "step-000004").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-000003"
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "nothing", model=model)


def test_metrics_jsonl_tensorboard_and_png(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(4):
        log.write(step=step, metrics={"success_rate": step / 4, "loss": 1.0 / (step + 1), "entropy": float("nan")})
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["success_rate"] for r in rows] == [0.0, 0.25, 0.5, 0.75] and rows[0]["entropy"] is None
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert any((tmp_path / "tb").iterdir())
    png = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["model.pt", "optim.pt", "rng.pt", "state.json"])
def test_a_checkpoint_damaged_on_disk_is_refused_in_one_line_naming_the_one_before(tmp_path, name):
    """A file of the latest checkpoint damaged after it was written whole (garbage, or cut short): before, a raw
    UnpicklingError / zip error traceback on every rank."""
    from lightswe.agent.checkpointing import CheckpointError
    from lightswe.errors import InfrastructureError

    model, opt = _setup()
    for step in (1, 2):
        save_checkpoint(tmp_path, step=step, model=model, optimizer=opt, keep=2)
    path = tmp_path / "step-000002" / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # cut short
    with pytest.raises(CheckpointError, match=rf"step-000002 cannot be read \({name}: .*fix: move .*step-000002 "
                                              r"aside to resume from step-000001$") as info:
        load_checkpoint(tmp_path, model=model, optimizer=opt)
    assert isinstance(info.value, InfrastructureError) and "\n" not in str(info.value)
    (tmp_path / "step-000002").rename(tmp_path / "aside")  # ("latest" still names it)
    assert load_checkpoint(tmp_path, model=model, optimizer=opt)["step"] == 1  # the fix works
