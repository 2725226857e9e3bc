"""torch.distributed for the loop: one process per device under ``torchrun``, gloo on CPU, nccl on CUDA.

Every rank computes the same decisions (counts are all-reduced before entropy, DDP keeps weights equal), and
only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (rank 0 of 1 when not distributed) and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the rank that writes checkpoints, reports and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there is more than one rank."""
        return self.world_size > 1


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Without ``WORLD_SIZE > 1`` in the environment this does nothing and returns rank 0 of 1. On CUDA each
    rank takes the GPU of its ``LOCAL_RANK``.

    Example::

        >>> ctx = init_distributed("cpu")   # under `torchrun --nproc_per_node 2`: rank 0 or 1 of 2
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
    if world <= 1:
        return DistContext(0, 1, dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), dev)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op on one rank)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op on one rank)."""
    if ctx.distributed:
        dist.barrier()
