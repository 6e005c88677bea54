"""End to end: ``lightswe train --model hf:DIR --engine vllm`` on CPU, a tiny Qwen2 checkpoint trained by CISPO
with vLLM sampling in Docker episodes and the learner's weights pushed into the engine after every update.

Checked: the run finishes its steps with updates; every episode of step 2 was sampled with the weights of the
step-1 checkpoint (their sampler log-probs equal the learner's recomputation under those weights), and the final
weights load back as a transformers checkpoint.
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
    steps = {m["step"]: m for m in metrics if "loss" in m}
    assert steps, "no update happened (no group with unequal rewards in any step)"

    step1 = HFCausalLM.from_pretrained(ckpt)
    state = torch.load(out / "checkpoints" / "step-000001" / "model.pt", map_location="cpu", weights_only=True)
    step1.load_state_dict(state)
    trajectories = list(read_trajectories(out / "rollouts" / "step-0002"))
    assert trajectories and all(t.policy == f"vllm:{out / 'vllm-start'}" for t in trajectories)
    worst = 0.0
    for t in trajectories:
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        with torch.no_grad():
            ref = step1.token_logprobs(torch.tensor([t.token_ids]), temperature=0.5)[0]
        worst = max(worst, float((ref[mask] - torch.tensor(t.logprobs)[mask]).abs().max()))
    print(f"step-2 episodes vs the step-1 learner: max |logprob diff| {worst:.2e}")
    assert worst < LOGPROB_TOL

    final = HFCausalLM.from_pretrained(out / "final")
    check_chat_template(final.tokenizer)
