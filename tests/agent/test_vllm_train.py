"""End to end: ``lightswe train --model hf:DIR --engine vllm`` on CPU, a tiny Qwen2 checkpoint trained by CISPO
with vLLM sampling in Docker episodes and the learner's weights pushed into the engine after every update.

Checked: the run finishes; every episode of step 1 was sampled with the engine's start weights and every episode
of step 2 with the step-1 checkpoint's (their sampler log-probs equal the learner's recomputation under those
weights), and the final weights load back as a transformers checkpoint. Whether step 1 updates (and so pushes)
depends on a group with unequal rewards: in the run here (tiny Qwen2, 150 warm-start steps) none had one, so the
push itself is what tests/agent/test_vllm.py checks (a real CISPO step, then push_weights).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from lightswe.agent.trajectory import read_trajectories
from lightswe.model.hf import HFCausalLM, check_chat_template, tiny_checkpoint

from .vllm_support import LOGPROB_TOL, child_env, needs_vllm, vllm_python

pytestmark = [pytest.mark.vllm, pytest.mark.docker, pytest.mark.slow, needs_vllm]


def test_train_hf_model_with_vllm_sampling_and_weight_sync(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "qwen2", "qwen2", seed=0)
    out = tmp_path / "run"
    cmd = [vllm_python(), "-m", "lightswe", "train", "--out", str(out), "--model", f"hf:{ckpt}",
           "--engine", "vllm", "--sampler.vllm-args", "dtype=float32", "enforce_eager=true", "max_model_len=2048",
           "seed=0", "--steps", "2", "--tasks-per-step", "2",
           "--group-size", "4", "--concurrency", "4", "--resample-rounds", "3", "--eval-tasks", "",
           "--warm-start-steps", "150"]
    proc = subprocess.run(cmd, cwd="/", env=child_env(), capture_output=True, text=True, timeout=3000, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(proc.stdout[-2000:])
    updates = sorted(m["step"] for m in metrics if "loss" in m)
    print(f"steps with an update (and so a weight push): {updates}")

    def episodes(step: int) -> list:
        folder = out / "rollouts" / f"step-{step:04d}"  # dynamic sampling's later draws are in draw-k/
        return [t for d in [folder, *sorted(folder.glob("draw-*"))] for t in read_trajectories(d)]

    def worst_diff(model, trajectories) -> float:
        worst = 0.0
        for t in trajectories:
            mask = torch.tensor(t.loss_mask, dtype=torch.bool)
            with torch.no_grad():
                ref = model.token_logprobs(torch.tensor([t.token_ids]), temperature=0.5)[0]
            worst = max(worst, float((ref[mask] - torch.tensor(t.logprobs)[mask]).abs().max()))
        return worst

    # step 1 was sampled with the engine's start weights, step 2 with the weights after step 1's update (pushed
    # into the running engine when there was one): each equals the learner's recomputation under those weights
    start = HFCausalLM.from_pretrained(out / "vllm-start")
    step1 = HFCausalLM.from_pretrained(ckpt)
    step1.load_state_dict(torch.load(out / "checkpoints" / "step-000001" / "model.pt", map_location="cpu",
                                     weights_only=True))
    first, second = episodes(1), episodes(2)
    assert first and second and all(t.policy == f"vllm:{out / 'vllm-start'}" for t in first + second)
    diffs = worst_diff(start, first), worst_diff(step1, second)
    print(f"max |logprob diff| step-1 episodes vs start weights {diffs[0]:.2e}, step-2 vs step-1 weights {diffs[1]:.2e}")
    assert max(diffs) < LOGPROB_TOL

    final = HFCausalLM.from_pretrained(out / "final")
    check_chat_template(final.tokenizer)
