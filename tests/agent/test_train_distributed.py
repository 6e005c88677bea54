"""FSDP2 on CPU (gloo, world size 2): the learner (two ranks with their rows == one process with all, also when a
rank has fewer or no rows), the sampler refresh, and ``lightswe train`` under torchrun end to end in Docker."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from lightswe.agent.cispo import CISPOLoss
from lightswe.agent.distributed import DistContext
from lightswe.agent.learner import Learner, LearnerConfig
from lightswe.agent.metrics import read_metrics
from lightswe.agent.sampling import SamplerConfig
from lightswe.agent.train import TrainConfig, check_distributed

COMMON = '''
import os
import sys
import torch
from lightswe.agent.distributed import DistContext
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

ctx = DistContext.from_env("cpu")  # gloo, torn down by ctx.close() at the end
rank = ctx.rank
model = shard_model(make_model(), reshard_after_forward=sys.argv[2] == "1")
Learner(model, CISPOLoss(), CONFIG).step(make_batch().rows(slice(2 * rank, 2 * rank + 2)))
full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()}
if rank == 0:
    torch.save(full, sys.argv[1])
ctx.close()  # a barrier, then destroy_process_group: no abort in gloo's destructors at exit (before: os._exit)
'''


@pytest.mark.parametrize(("moe", "reshard"), [("loop", "1"), ("grouped", "1"), ("grouped", "0")],
                         ids=["loop", "grouped", "grouped-gathered-until-backward"])
def test_fsdp2_two_ranks_match_single_process(tmp_path, moe, reshard, monkeypatch):
    """Also with the grouped-GEMM experts (model/moe.py; forced on CPU), whose stacked weights put every expert in
    the graph without the learner's touch hook, and with the layers' weights kept gathered from forward to
    backward (``reshard_after_forward=False``). Two micro-batches per rank: the first accumulates its gradient
    locally (no reduce-scatter), the second reduces the sum."""
    monkeypatch.setenv("LIGHTSWE_MOE_BACKEND", moe)  # the ranks inherit it
    script, out = tmp_path / "worker.py", tmp_path / "fsdp.pt"
    script.write_text(textwrap.dedent(WORKER))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out), reshard], check=False, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = torch.load(out)

    namespace: dict = {}
    exec(COMMON, namespace)  # noqa: S102 - the same model, batch and config in this process
    model = namespace["make_model"]()
    Learner(model, CISPOLoss(), namespace["CONFIG"]).step(namespace["make_batch"]())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(sharded[k], v, rtol=1e-4, atol=1e-6, msg=k)


BF16_GATHER = COMMON + '''
import sys
import torch.distributed as dist
from lightswe.agent.learner import shard_model

ctx = DistContext.from_env("cpu")  # gloo, torn down by ctx.close() at the end
rank = ctx.rank
model = shard_model(make_model(), param_dtype=torch.bfloat16)
ids = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(1))
with torch.autocast("cpu", dtype=torch.bfloat16):
    logp = model.score(ids[2 * rank:2 * rank + 2]).logprobs
(logp.sum() * dist.get_world_size()).backward()  # FSDP averages over ranks: undo it, as the Learner does
grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
assert all(p.dtype == torch.float32 for p in model.parameters())  # the shards (and AdamW's state) stay fp32
if rank == 0:
    torch.save(grads, sys.argv[1])
ctx.close()  # a barrier, then destroy_process_group: no abort in gloo's destructors at exit (before: os._exit)
'''


def test_fsdp2_bf16_all_gather_gives_the_autocast_gradients(tmp_path):
    """shard_model(param_dtype=bf16): the layers' weights travel in bf16 (autocast rounds them so anyway), the
    gradients are reduced in fp32 into fp32 shards, and they equal one process's bf16-autocast gradients."""
    script, out = tmp_path / "worker.py", tmp_path / "grads.pt"
    script.write_text(textwrap.dedent(BF16_GATHER))
    proc = torchrun(str(script), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = torch.load(out)
    namespace: dict = {}
    exec(COMMON, namespace)  # noqa: S102 - the same model in this process
    model = namespace["make_model"]()
    ids = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.score(ids).logprobs.sum().backward()
    for name, param in model.named_parameters():
        scale = param.grad.abs().max().item() + 1e-8
        assert (sharded[name] - param.grad).abs().max().item() <= 2e-2 * scale, name  # measured <= 8.3e-3


def torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], check=False, capture_output=True, text=True, timeout=timeout)


UNEVEN = COMMON + '''
import sys
import torch.distributed as dist
from lightswe.agent.cispo import CISPOLoss
from lightswe.agent.distributed import refresh_sampler
from lightswe.agent.learner import Learner, LearnerConfig, shard_model

ctx = DistContext.from_env("cpu")  # gloo, torn down by ctx.close() at the end
rank = ctx.rank
results = {}
# rank 0 has 3 rows (3 micro-batches), rank 1 none / 1 row; "recompute" pads the no-grad passes as well
for name, rows, behaviour in (("empty", [slice(0, 3), slice(3, 3)], "sampler"),
                              ("uneven", [slice(0, 3), slice(3, 4)], "recompute")):
    model = make_model()
    sampler = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shard_model(model)
    config = LearnerConfig(lr=1e-3, minibatches=1, micro_batch_size=1, grad_clip=1.0, behaviour=behaviour)
    metrics = Learner(model, CISPOLoss(), config).step(make_batch().rows(rows[rank]))
    refresh_sampler(sampler, model)
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}
    assert all(torch.equal(sampler.state_dict()[k], v) for k, v in full.items()), "sampler != learner"
    assert any(not torch.equal(before[k], v) for k, v in full.items()), "no update"
    results[name] = {"sampler": sampler.state_dict(), "metrics": metrics}

# exact resume of a sharded model + AdamW state: step, save, step == step, save, load into fresh shards, step
from lightswe.agent.checkpointing import load_checkpoint, save_checkpoint

runs = []
for resume in (False, True):
    model = shard_model(make_model())
    learner = Learner(model, CISPOLoss(), CONFIG)
    learner.step(make_batch().rows(slice(2 * rank, 2 * rank + 2)))
    if resume:
        model = shard_model(make_model())
        learner = Learner(model, CISPOLoss(), CONFIG)
        load_checkpoint(sys.argv[2], model=model, optimizer=learner.optimizer)
    else:
        save_checkpoint(sys.argv[2], step=1, model=model, optimizer=learner.optimizer)
    learner.step(make_batch().rows(slice(2 * (1 - rank), 2 * (1 - rank) + 2)))
    runs.append({k: v.full_tensor() for k, v in model.state_dict().items()})
assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0]), "resume differs"

# a checkpoint written by one process resumes on two ranks (optimiser state keyed by parameter name)
model = shard_model(make_model())
learner = Learner(model, CISPOLoss(), CONFIG)
load_checkpoint(sys.argv[3], model=model, optimizer=learner.optimizer)
single = torch.load(sys.argv[3] + "/step-000001/model.pt", weights_only=True)
assert all(torch.equal(v.full_tensor(), single[k]) for k, v in model.state_dict().items()), "1 -> 2 ranks"
assert len(learner.optimizer.state) == len(list(model.parameters())), "AdamW state not restored on 2 ranks"
torch.save(results, sys.argv[1].replace("RANK", str(rank)))
ctx.close()  # a barrier, then destroy_process_group: no abort in gloo's destructors at exit (before: os._exit)
'''


def test_rank_with_fewer_or_no_rows_joins_the_step_and_samplers_get_the_update(tmp_path):
    """No deadlock when one rank has no rows (or fewer micro-batches); the update equals one process on the
    union of the rows; after the refresh both ranks' samplers hold the gathered learner weights; a checkpoint of
    the shards and their AdamW state resumes to the same next step."""
    from lightswe.agent.checkpointing import load_checkpoint, save_checkpoint

    namespace: dict = {}
    exec(COMMON, namespace)  # noqa: S102
    one = namespace["make_model"]()  # a one-process checkpoint for the ranks to resume
    one_learner = Learner(one, CISPOLoss(), namespace["CONFIG"])
    one_learner.step(namespace["make_batch"]())
    save_checkpoint(tmp_path / "ckpt1", step=1, model=one, optimizer=one_learner.optimizer)

    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(UNEVEN))
    proc = torchrun(str(script), str(tmp_path / "out-RANK.pt"), str(tmp_path / "ckpt"), str(tmp_path / "ckpt1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ckpt" / "step-000001" / "rng-rank1.pt").exists()
    ranks = [torch.load(tmp_path / f"out-{r}.pt", weights_only=False) for r in (0, 1)]

    # ... and the two ranks' checkpoint resumes in one process, AdamW state included
    fresh = namespace["make_model"]()
    fresh_learner = Learner(fresh, CISPOLoss(), namespace["CONFIG"])
    load_checkpoint(tmp_path / "ckpt", model=fresh, optimizer=fresh_learner.optimizer)
    saved = torch.load(tmp_path / "ckpt" / "step-000001" / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())
    assert len(fresh_learner.optimizer.state) == len(list(fresh.parameters()))
    for name, rows, behaviour in (("empty", 3, "sampler"), ("uneven", 4, "recompute")):
        model = namespace["make_model"]()
        config = LearnerConfig(lr=1e-3, minibatches=1, micro_batch_size=1, grad_clip=1.0, behaviour=behaviour)
        single = Learner(model, CISPOLoss(), config).step(namespace["make_batch"]().rows(slice(0, rows)))
        for r in (0, 1):
            assert ranks[r][name]["metrics"]["policy_tokens"] == single["policy_tokens"]
            torch.testing.assert_close(ranks[r][name]["metrics"]["loss"], single["loss"], rtol=1e-4, atol=1e-6)
            for k, v in model.state_dict().items():
                torch.testing.assert_close(ranks[r][name]["sampler"][k], v, rtol=1e-4, atol=1e-6, msg=f"{name} {k}")


TEARDOWN = '''
import sys
import torch.distributed as dist
from lightswe.agent.distributed import DistContext

try:
    with DistContext.from_env("cpu") as ctx:
        assert ctx.sum([1.0]) == [2.0] and ctx.broadcast_object({"rank": ctx.rank}) == {"rank": 0}
        if sys.argv[1] == "fail":  # both ranks fail after their collectives (a bad checkpoint, Ctrl-C...)
            raise RuntimeError(f"rank {ctx.rank} failed")
except RuntimeError as err:
    print(f"raised: {err}")
print(f"rank group left: {dist.is_initialized()}", flush=True)
'''


@pytest.mark.parametrize("how", ["finish", "fail"])
def test_the_process_group_is_torn_down_before_exit_on_every_path(tmp_path, how):
    """``DistContext`` as ``train`` uses it: its exit tears the gloo group down (after a barrier when the run
    finished; at once after an error) before the interpreter's teardown. Left to the interpreter, gloo's
    destructors aborted a rank ('terminate called without an active exception', exit -6: a failed job to torchrun
    and a scheduler) in 5 of 20 launches of a 2-rank job here; torn down, in 0 of 20. (``torchrun -m lightswe
    train`` did not abort in 14 finished and 10 failed runs before the change: its finishing path already
    destroyed the group, its error path did not.) Two launches, each rank's exit checked (the 20-launch counts are in the
    README; a default test cannot afford them)."""
    script = tmp_path / "teardown.py"
    script.write_text(textwrap.dedent(TEARDOWN))
    for _ in range(2):
        proc = torchrun(str(script), how, timeout=120)
        assert proc.returncode == 0 and "terminate called" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stdout.count("rank group left: False") == 2, proc.stdout
        assert proc.stdout.count("raised: rank") == (2 if how == "fail" else 0)


def test_bad_distributed_setups_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="Drop --ray"):
        check_distributed(TrainConfig(sampler=SamplerConfig(ray="local")), world=2)
    with pytest.raises(ValueError, match="tasks-per-step >= 4"):
        check_distributed(TrainConfig(tasks_per_step=3), world=4)
    check_distributed(TrainConfig(tasks_per_step=3, sampler=SamplerConfig(ray="local")), world=1)  # one process: anything goes
    check_distributed(TrainConfig(tasks_per_step=5), world=2)  # uneven: rank 0 gets 3 tasks, rank 1 gets 2


def test_tasks_are_shared_in_contiguous_whole_slices():
    items = list(range(5))
    parts = [DistContext(rank=r, world=2).share(items) for r in (0, 1)]
    assert parts == [([0, 1, 2], 0), ([3, 4], 3)]
    assert DistContext().share(items) == (items, 0)


@pytest.mark.docker
@pytest.mark.slow
def test_lightswe_train_under_torchrun_two_ranks_then_resume(tmp_path):
    """``torchrun --nproc-per-node 2 -m lightswe train`` on the arithmetic family: warm start on rank 0, one step
    with one task group per rank, one set of outputs; a second launch resumes from the checkpoint."""
    run = tmp_path / "run"
    args = ["-m", "lightswe", "train", "--out", str(run), "--tasks-per-step", "2", "--group-size", "2",
            "--concurrency", "2", "--eval-tasks", "", "--warm-start-steps", "3"]
    first = torchrun(*args, "--steps", "1", timeout=900)
    assert first.returncode == 0 and "terminate called" not in first.stderr, first.stderr[-4000:]
    assert first.stdout.count("step 1/1:") == 1 and first.stdout.count("warm start:") == 1  # rank 0 prints
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1] and rows[0]["episodes"] == 4  # both ranks' episodes, one row
    for rank in (0, 1):  # each rank ran its own whole group
        assert len(list((run / "rollouts" / "step-0001" / f"rank-{rank}").glob("part-*"))) >= 1
    ckpt = run / "checkpoints" / "step-000001"
    assert (ckpt / "rng.pt").exists() and (ckpt / "rng-rank1.pt").exists()
    from lightswe.model import MiniMaxForCausalLM

    learner = torch.load(ckpt / "model.pt", weights_only=True)  # gathered from the FSDP shards
    final = MiniMaxForCausalLM.from_pretrained(run / "final").state_dict()
    assert final.keys() == learner.keys()
    for k, v in learner.items():  # rank 0's sampler copy == the learner after the (possible) update
        assert torch.equal(final[k], v), k

    # resumed with dynamic sampling: a second draw of two tasks (one per rank) when neither group had signal
    second = torchrun(*args, "--steps", "2", "--resample-rounds", "1", "--allow-change", "steps,resample_rounds",
                      timeout=900)
    assert second.returncode == 0 and "terminate called" not in second.stderr, second.stderr[-4000:]
    assert "resumed from step 1" in second.stdout and "warm start:" not in second.stdout
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    last = rows[-1]
    extra = int(last["episodes"] - 4) // 2  # tasks of the second draw (2 episodes each), summed over ranks
    state = json.loads((run / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["cursor"] == 4 + extra and state["step"] == 2
    if last["draws"] == 1:  # both groups of the first draw had signal
        assert last["filtered_share"] == 0.0 and extra == 0
    else:  # one task per group without signal, on rank 0 first
        assert last["draws"] == 2 and extra in (1, 2) and last["filtered_share"] > 0
        assert (run / "rollouts" / "step-0002" / "draw-1" / "rank-0").is_dir()
    # step 2 started from the step-1 checkpoint's weights; it changed them iff some rank kept a group (a random
    # tiny model usually fails every episode, so every group is filtered: then no rank may step, and none did)
    after = torch.load(run / "checkpoints" / "step-000002" / "model.pt", weights_only=True)
    updated = "optimizer_steps" in read_metrics(run / "metrics.jsonl")[-1]
    assert any(not torch.equal(after[k], v) for k, v in learner.items()) == updated
    final = MiniMaxForCausalLM.from_pretrained(run / "final").state_dict()
    assert all(torch.equal(final[k], v) for k, v in after.items())
