"""``lightswe rollout --policy hf:DIR``: a transformers checkpoint drives real Docker episodes, token-exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from lightswe.agent.chat import Conversation
from lightswe.agent.trajectory import read_trajectories
from lightswe.envs.swe_env import default_tasks_path
from lightswe.model import load_tokenizer
from lightswe.model.hf import HFCausalLM, tiny_checkpoint

pytestmark = pytest.mark.docker


def test_rollout_with_a_transformers_checkpoint_is_token_exact(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "qwen2", "qwen2", seed=5)
    task = default_tasks_path().read_text().splitlines()[0]
    (tmp_path / "tasks.jsonl").write_text(task + "\n")
    cmd = [sys.executable, "-m", "lightswe", "rollout", "--tasks", str(tmp_path / "tasks.jsonl"),
           "--policy", f"hf:{ckpt}", "--out", str(tmp_path / "out"), "--group-size", "1", "--concurrency", "1",
           "--max-steps", "2", "--max-new-tokens", "24", "--temperature", "0.9", "--early-stop", "off",
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trajectories = list(read_trajectories(tmp_path / "out"))
    assert len(trajectories) == 1
    tokenizer, model = load_tokenizer(ckpt), HFCausalLM.from_pretrained(ckpt)  # the checkpoint's own tokenizer
    for t in trajectories:
        assert t.policy == f"hf:{ckpt}" and t.reward is not None  # graded (a random model earns 0.0)
        conv = Conversation(tokenizer)
        conv.messages = t.messages
        conv.token_ids = t.token_ids
        assert tokenizer.decode(t.token_ids) == conv.render()  # the text is the tokens, nothing re-tokenised
        with torch.no_grad():
            ref = model.token_logprobs(torch.tensor([t.token_ids]), temperature=0.9)[0]
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        assert mask.sum() > 0
        assert ref[mask].tolist() == pytest.approx(torch.tensor(t.logprobs)[mask].tolist(), abs=1e-4)
    assert json.loads(task)["instance_id"] == trajectories[0].task_id
