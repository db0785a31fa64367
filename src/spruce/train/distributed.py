"""Data-parallel training through ``torch.distributed`` (DDP).

Launched by ``torchrun --nproc-per-node N -m spruce.train ...`` (or any launcher that sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), each
process joins one process group: NCCL with one GPU per process (``cuda:LOCAL_RANK``),
gloo on CPUs. Without those variables the run is a single process and every helper here
is a no-op. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device
    initialized_here: bool = False  # this module started the process group (and ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for but torch sees no GPU; use --device cpu")
        return torch.device(pref if ":" in pref else f"cuda:{local_rank}")
    return torch.device(pref)


def setup(device_pref: str = "auto") -> Dist:
    """Join the process group described by the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, pick_device(device_pref))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        started = True
    return Dist(dist.get_rank(), dist.get_world_size(), device, started)


def cleanup(d: Dist) -> None:
    if d.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def _on_device(t: torch.Tensor, d: Dist, op) -> None:
    """Run the collective ``op`` on ``t``; NCCL needs it on this rank's GPU."""
    if t.device == d.device or d.device.type != "cuda":
        op(t)
        return
    moved = t.to(d.device)
    op(moved)
    t.copy_(moved.to(t.device))


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum over ranks, in place; returns ``t``."""
    if d.active:
        _on_device(t, d, lambda x: dist.all_reduce(x, op=dist.ReduceOp.SUM))
    return t


def broadcast_(t: torch.Tensor, d: Dist) -> None:
    """Rank 0's values into ``t`` on every rank, in place."""
    if d.active:
        _on_device(t, d, lambda x: dist.broadcast(x, src=0))


def gather_objects(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()
