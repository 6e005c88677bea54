"""Checkpoints that resume exactly and never leave a half-written directory behind.

A checkpoint is a directory ``step-000042/`` holding ``model.pt`` (weights), ``optim.pt`` (AdamW moments and
step counts), ``state.json`` (step, data cursor, anything the loop adds) and ``rng.pt`` (torch, CUDA, Python
and NumPy generator states). It is written under a temporary name, fsynced, then renamed in one
``os.replace``; ``latest`` (a one-line file, itself replaced atomically) names the newest complete one. A crash
mid-write leaves only a ``.tmp-*`` directory that loading ignores and the next save removes.

With torch.distributed (FSDP2) the full state dict (model and AdamW state, keyed by parameter name) is gathered
to rank 0, which writes it with every rank's RNG states (``rng-rank<r>.pt``); every rank loads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightswe.durable import fsync_dir
from lightswe.errors import InfrastructureError, UserInputError
from torch import nn

LATEST = "latest"


class CheckpointError(InfrastructureError, OSError):
    """Writing a checkpoint failed (disk full, I/O error): one line naming the step, the cause and the fix; the
    temporary directory is removed and the previous checkpoint stays the latest. Also a checkpoint that cannot be
    read back (a file damaged on disk after it was written whole), naming the file and the fix."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full state dicts with the optimiser state keyed by parameter name (not position), the same with one
    process or N FSDP ranks: a run saved on one world size resumes on another."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                     cpu_offload=_distributed()))


def save_checkpoint(root: str | Path, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write ``root/step-{step}`` atomically, point ``latest`` at it and keep the newest ``keep``."""
    root = Path(root)
    model_sd, optim_sd = _state_dicts(model, optimizer)  # collective under FSDP: every rank calls it
    rngs = [rng_state()]
    if _distributed():  # each rank's generators (rank 0's in rng.pt, rank r's in rng-rank<r>.pt)
        rngs = [None] * dist.get_world_size()
        dist.all_gather_object(rngs, rng_state())
    final = root / f"step-{step:06d}"
    if _distributed() and dist.get_rank() != 0:
        dist.barrier()
        return final
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    try:
        tmp.mkdir()
        _save(model_sd, tmp / "model.pt")
        _save(optim_sd, tmp / "optim.pt")
        for rank, rng in enumerate(rngs):
            _save(rng, tmp / ("rng.pt" if rank == 0 else f"rng-rank{rank}.pt"))
        with open(tmp / "state.json", "w") as f:
            json.dump({"step": step, **(state or {})}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
    except BaseException as err:  # disk full, I/O error, Ctrl-C: no half-written directory left behind
        shutil.rmtree(tmp, ignore_errors=True)
        cause = _os_error(err)  # torch.save raises a RuntimeError with the OSError as its context
        if cause is not None:
            raise CheckpointError(f"cannot write checkpoint step {step} under {root}: {cause}; the previous "
                                  f"checkpoint is intact; fix: free space (df -h {root}) or fix the disk, then "
                                  "run the same command again (it resumes from that checkpoint)") from err
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / f".tmp-{LATEST}"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, root / LATEST)
    fsync_dir(root)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    if _distributed():
        dist.barrier()
    return final


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (itself, or in its chain of causes and contexts), else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (or ``root`` itself if it is one), else None."""
    root = Path(root)
    if (root / "state.json").exists():
        return root
    pointer = root / LATEST
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if (path / "state.json").exists():
            return path
    done = [p for p in sorted(root.glob("step-*")) if (p / "state.json").exists()]
    return done[-1] if done else None


def load_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Load weights, optimiser and RNG from a checkpoint (or the latest under a root); returns state.json."""
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no complete checkpoint under {path} (expected step-*/state.json); "
                                f"fix: point at a checkpoint directory or a run's checkpoints/ folder")
    model_sd = _load(found, "model.pt", weights_only=True)
    optim_sd = _load(found, "optim.pt", weights_only=False) if optimizer else None
    by_position = optim_sd is not None and any(isinstance(k, int) for k in optim_sd.get("state", {}))
    if by_position and not _distributed():  # written before the state was keyed by name, by one process
        model.load_state_dict(model_sd)
        optimizer.load_state_dict(optim_sd)
    elif by_position:
        raise UserInputError(f"{found}: its optimiser state is keyed by position (an older one-process checkpoint); "
                         f"resume it once without torchrun so that the next checkpoint is keyed by name")
    else:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_state_dict,
        )

        if optimizer is None:
            set_model_state_dict(model, model_sd, options=StateDictOptions(full_state_dict=True))
        else:
            set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                           options=StateDictOptions(full_state_dict=True))
    if restore_rng:
        own = found / f"rng-rank{dist.get_rank()}.pt" if _distributed() else found / "rng.pt"
        set_rng_state(_load(found, own.name if own.exists() else "rng.pt", weights_only=False))
    try:
        return json.loads((found / "state.json").read_text())
    except ValueError as err:
        raise _damaged(found, "state.json", err) from None


def _load(found: Path, name: str, *, weights_only: bool) -> Any:
    """``torch.load`` of a checkpoint's file; a file that does not load is a :class:`CheckpointError`."""
    try:
        return torch.load(found / name, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - torch.load raises pickle, zip and runtime errors for a damaged file
        raise _damaged(found, name, err) from None


def _damaged(found: Path, name: str, err: BaseException) -> CheckpointError:
    before = [p for p in sorted(found.parent.glob("step-*")) if p.name < found.name and (p / "state.json").exists()]
    fix = (f"move {found} aside to resume from {before[-1].name}" if before else
           "restore the file, or start over in a new --out (no earlier checkpoint is kept)")
    first = " ".join(str(err).split()).split(". ")[0][:200]  # torch's long advice (weights_only=False) left out
    return CheckpointError(f"checkpoint {found} cannot be read ({name}: {type(err).__name__}: {first}); fix: {fix}")
