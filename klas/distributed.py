"""torch.distributed for klas: one process per rank, launched by torchrun (NCCL on GPUs, gloo on CPU).

Without torchrun every helper here acts as rank 0 of 1 and does nothing collective, so the same
code serves one process and many. The rules the stages follow:

- samples are shared out by rank (`even_share`); partial sums meet in `all_reduce_sum`;
- only rank 0 writes files that every rank reads (manifests, probes, scores, checkpoints, reports),
  and a `barrier` follows before anyone reads them;
- a rank that dies ends the job: torchrun's agent stops the other ranks and names the failed one,
  and every collective has a timeout (`timeout_s`), so a rank stuck in a collective fails too.

Tensors move to the backend's device for a collective (CUDA for NCCL, CPU for gloo) and back.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["Context", "init_from_env", "context", "is_main", "barrier", "all_reduce_sum", "even_share",
           "rank_device", "shutdown", "launched_by_torchrun", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not initialised (one process)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


_context = Context()


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher setting RANK and WORLD_SIZE) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device: str = "cpu", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Context:
    """Joins the process group torchrun describes in the environment (a no-op without torchrun).

    device: the run's device; "cuda" selects NCCL and this rank's GPU (LOCAL_RANK), anything else gloo.
    timeout_s: how long a collective waits for the other ranks before the job fails.
    """
    global _context
    if not launched_by_torchrun():
        return _context
    import torch
    import torch.distributed as dist

    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_initialized():
        _context = Context(rank, world, local, dist.get_backend())
        return _context
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    _context = Context(rank, world, local, backend)
    return _context


def shutdown() -> None:
    """Leaves the process group (if one was joined)."""
    global _context
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _context = Context()


def context() -> Context:
    return _context


def is_main() -> bool:
    return _context.rank == 0


def rank_device(device: str) -> str:
    """This rank's device: "cuda" becomes "cuda:LOCAL_RANK" when distributed; others unchanged."""
    if _context.distributed and device == "cuda":
        return f"cuda:{_context.local_rank}"
    return device


def _collective_device() -> torch.device:
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if _context.backend == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Waits for every rank (no-op in one process)."""
    if not _context.distributed:
        return
    import torch.distributed as dist

    if _context.backend == "nccl":
        dist.barrier(device_ids=[_context.local_rank])
    else:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Σ of `tensor` over the ranks, on `tensor`'s device (the input itself in one process)."""
    if not _context.distributed:
        return tensor
    import torch.distributed as dist

    work = tensor.to(_collective_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def even_share(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(start, count)`` of rank's contiguous share of n items; the first n % world_size ranks get one more."""
    rank = _context.rank if rank is None else rank
    world_size = _context.world_size if world_size is None else world_size
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)
