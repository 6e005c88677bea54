"""FSDP2 learner on CPU (gloo, world size 2): two ranks with half the rows each == one process with all."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from lightswe.agent.cispo import CISPOLoss
from lightswe.agent.learner import Learner

COMMON = '''
import torch
from lightswe.agent.learner import LearnerConfig, TrainBatch
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

def make_model():
    model = MiniMaxForCausalLM(MiniMaxConfig.preset("tiny"))
    model.init_weights(seed=0)
    return model

def make_batch():
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (12, 20, 9, 16)]
    masks = [[int(t >= 4 and i != 3) for t in range(len(x))] for i, x in enumerate(tokens)]  # row 3: none
    logps = [[-float(torch.rand(1, generator=g)) * 5 * m for m in mask] for mask in masks]
    return TrainBatch.from_sequences(tokens, masks, logps, [1.0, -0.5, 0.7, 2.0])

CONFIG = LearnerConfig(lr=1e-3, minibatches=1, micro_batch_size=1, grad_clip=1.0)
'''

WORKER = COMMON + '''
import sys
import torch.distributed as dist
from lightswe.agent.cispo import CISPOLoss
from lightswe.agent.learner import Learner, shard_model

dist.init_process_group("gloo")
rank = dist.get_rank()
model = shard_model(make_model())
Learner(model, CISPOLoss(), CONFIG).step(make_batch().rows(slice(2 * rank, 2 * rank + 2)))
full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()}
if rank == 0:
    torch.save(full, sys.argv[1])
dist.destroy_process_group()
'''


def test_fsdp2_two_ranks_match_single_process(tmp_path):
    script, out = tmp_path / "worker.py", tmp_path / "fsdp.pt"
    script.write_text(textwrap.dedent(WORKER))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], check=False, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = torch.load(out)

    namespace: dict = {}
    exec(COMMON, namespace)  # noqa: S102 - the same model, batch and config in this process
    model = namespace["make_model"]()
    Learner(model, CISPOLoss(), namespace["CONFIG"]).step(namespace["make_batch"]())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(sharded[k], v, rtol=1e-4, atol=1e-6, msg=k)
