"""torch.distributed for ``lightswe train`` under torchrun: process group, work split, reductions, weight copies.

Launched as ``torchrun --nproc-per-node N -m lightswe train ...`` every rank builds the same model; the learner's
copy is sharded with FSDP2 while each rank keeps an unsharded *sampler* copy for its rollouts, refreshed from the
gathered full weights after every update (the pattern of syncing a vLLM engine). Each rank runs whole task
groups (group advantages stay local); counts and metrics are summed across ranks. Without torchrun
(``WORLD_SIZE`` unset or 1) every helper here is the identity, so one code path serves both.

The process group is torn down by :meth:`DistContext.close` (the context manager's exit): a barrier, then
``destroy_process_group``, while the interpreter is whole. Left to the interpreter's exit, gloo's destructors
ran in any order and aborted a rank now and then ("terminate called without an active exception", exit -6), and a
finished job read as failed to torchrun and to a cluster's scheduler.

Example::

    with DistContext.from_env("cuda") as ctx:    # rank 1 of 2 -> nccl, device cuda:<LOCAL_RANK>
        mine, first = ctx.share(step_tasks)      # this rank's contiguous slice and its offset
        totals = ctx.sum([resolved, graded])     # the same list on every rank afterwards
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from lightswe.errors import UserInputError

# Ranks wait for each other in collectives while one runs rollouts in Docker or the warm start (rank 0 only):
# far longer than the default 10-30 min watchdog, so the group's timeout is generous.
TIMEOUT = timedelta(hours=4)


@dataclass(kw_only=True, slots=True)
class DistContext:
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    owns_group: bool = False  # this context initialised the process group (and destroys it at close)

    @classmethod
    def from_env(cls, device: str) -> DistContext:
        """Join the torchrun job described by the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``):
        nccl on CUDA with device ``cuda:LOCAL_RANK``, gloo on CPU. A single process gets the identity context."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 and not dist.is_initialized():
            return cls(device=device)
        cuda = device.startswith("cuda")
        if cuda:
            if not torch.cuda.is_available():
                raise UserInputError(f"device {device!r} under torchrun but CUDA is not available; use --device cpu")
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise UserInputError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s); launch "
                                 f"torchrun with --nproc-per-node <= {torch.cuda.device_count()}")
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT,
                                    device_id=torch.device(device) if cuda else None)
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owns_group=owns)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> tuple[list, int]:
        """This rank's contiguous slice of ``items`` (the first ``len % world`` ranks get one more) and the
        index of its first item, so per-item seeds can match a single process."""
        base, extra = divmod(len(items), self.world)
        first = self.rank * base + min(self.rank, extra)
        return items[first:first + base + (self.rank < extra)], first

    def _reduce(self, values: list[float], op) -> list[float]:
        if not self.distributed or not values:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_module(self, module: nn.Module) -> None:
        """Overwrite every parameter and buffer with rank 0's (e.g. after a warm start run on rank 0 only)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def close(self, *, ok: bool = True) -> None:
        """Tear down the process group this context initialised (a no-op otherwise, and the second time).

        ``ok``: every rank reached this call (the run finished): first a barrier, so that no rank closes its
        connections while another still uses them, then ``destroy_process_group`` (see the module docs). After a
        failure (``ok=False``) a rank cannot wait for the others (they may be inside another collective, or gone):
        a gloo group is destroyed at once, so that the rank exits with its own error rather than an abort in
        gloo's destructors (peers blocked on it see the connection close and fail too, instead of waiting out
        ``TIMEOUT``); an nccl group is left to torchrun, which stops the other ranks when one fails.
        """
        if not (self.owns_group and dist.is_initialized()):
            return
        self.owns_group = False
        try:
            if ok:
                dist.barrier()
        finally:
            if ok or dist.get_backend() == "gloo":
                dist.destroy_process_group()

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


@torch.no_grad()
def refresh_sampler(sampler: nn.Module, learner_model: nn.Module) -> None:
    """Copy the learner's (FSDP2-sharded) weights into the unsharded sampler, one gathered tensor at a time.
    Collective: every rank calls it, in the same order of names."""
    target = sampler.state_dict()
    for name, value in learner_model.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        target[name].copy_(full)
