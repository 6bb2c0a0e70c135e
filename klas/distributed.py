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
           "rank_device", "shutdown", "launched_by_torchrun", "slurm_step_ranks", "adopt_slurm_ranks", "port_for_job",
           "DEFAULT_TIMEOUT_S"]

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
    """True when torchrun (or another launcher setting RANK and WORLD_SIZE: `srun` through
    `adopt_slurm_ranks`) started this process as one of several ranks."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def port_for_job(job_id: int, step_id: int = 0) -> int:
    """The rendezvous port of a SLURM job step, in 20000-59999: two jobs on one node (and two steps
    of one job) get different ports unless their ids are 5,000 jobs apart."""
    return 20000 + (job_id * 8 + step_id % 8) % 40000


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("vm", "a,b", "node[03-07,9]")."""
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    import shutil
    import subprocess

    if shutil.which("scontrol"):
        done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.split():
            return done.stdout.split()[0]
    prefix, rest = nodelist.split("[", 1)
    first = rest.split(",")[0].split("]")[0].split("-")[0]
    return prefix + first


def slurm_step_ranks(env=None) -> dict[str, str] | None:
    """The torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) of a
    process that `srun` started as one task of a step of several, without torchrun; None for
    anything else (torchrun already set RANK; a batch script outside any step; a step of one task).

    The rank is SLURM_PROCID of SLURM_STEP_NUM_TASKS, the local rank SLURM_LOCALID, the address the
    step's first node, the port MASTER_PORT when set, else `port_for_job` of the job and step ids."""
    env = os.environ if env is None else env
    if "RANK" in env or "SLURM_STEP_ID" not in env:
        return None
    try:
        world = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
        rank, local = int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", "0"))
        job, step = int(env.get("SLURM_JOB_ID", "0")), int(env["SLURM_STEP_ID"])
    except (KeyError, ValueError):
        return None
    if world <= 1:
        return None
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local),
            "MASTER_ADDR": env.get("MASTER_ADDR") or _first_host(nodes),
            "MASTER_PORT": env.get("MASTER_PORT") or str(port_for_job(job, step))}


def adopt_slurm_ranks() -> bool:
    """Under a plain `srun -n N python -m klas …` (no torchrun), sets this process's rank variables
    from SLURM's (`slurm_step_ranks`), so that it joins the others as torchrun's ranks would;
    True when it did."""
    ranks = slurm_step_ranks()
    if ranks is None:
        return False
    os.environ.update(ranks)
    return True


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
