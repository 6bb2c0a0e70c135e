"""Finetuning the stitched supernet (SN-Net's recipe, METHOD.md §6), resumable.

Each step trains one route drawn uniformly from a seeded `torch.Generator` (the whole schedule is
drawn up front, so a resumed run draws the same routes); the batch order is a seeded permutation per
epoch, also a function of the step. AdamW with a linear warm-up and a cosine decay; each step's forward
in the settings' precision (klas.precision: bfloat16 autocast on CUDA by default). A checkpoint (weights, optimizer, schedule position) is written every `checkpoint_every`
steps, atomically; run again with the same settings, finetuning continues from it.

BatchNorm: every route shares the anchors' BatchNorm layers, and a step of one route would move
their running statistics towards that route's features (a stitched route feeds the target's blocks
other activations than the target's own stem). With `freeze_bn` (the default) BatchNorm layers stay
in eval mode: they normalise with the anchors' pretrained statistics, and their affine weights
still train. The stitching layers start as least-squares maps into the target's activations, so
those statistics fit the stitched routes too. `freeze_bn=False` updates the statistics as plain
training does.

Under torchrun the supernet trains with DistributedDataParallel: every rank draws the same route
and takes an equal slice of the step's batch, so the averaged gradient is the one-process gradient
(with frozen BatchNorm the result differs from one process by rounding only; with `freeze_bn=False`
each rank normalises by its own slice's statistics). Rank 0 writes the checkpoints; every rank
resumes from them.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from klas import distributed as dist
from klas.compiling import compiled_parts, should_compile, supernet_parts
from klas.memory_format import channels_last_models
from klas.precision import training_autocast
from klas.errors import KlasError
from klas.extraction.data import prefetched
from klas.files import torch_save_atomic
from klas.progress import progress_bar
from klas.stitching.settings import FinetuneSettings
from klas.stitching.stitch import StitchedSupernet
from klas.training_log import TRAINING_CSV, TrainingLog

__all__ = ["FinetuneSettings", "finetune", "load_finetuning_checkpoint", "training_plan", "route_schedule", "StepBatches",
           "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"


def route_schedule(num_routes: int, steps: int, seed: int) -> torch.Tensor:
    """The route trained at each step ``[steps]``: uniform, from a generator seeded with `seed`."""
    return torch.randint(num_routes, (steps,), generator=torch.Generator().manual_seed(seed))


class StepBatches(torch.utils.data.Sampler):
    """Index batches for steps start..steps-1: epoch e is a permutation seeded by (seed, e), last
    partial batch dropped, so the batch of a step never depends on where a run resumed. Rank r of
    w takes the r-th of w equal slices of each batch."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, steps: int, rank: int = 0, world_size: int = 1):
        if n < batch_size:
            raise KlasError(f"the training split has {n} images, fewer than the batch size {batch_size}")
        if batch_size % world_size:
            raise KlasError(f"the finetuning batch size {batch_size} must be a multiple of the number of ranks "
                            f"{world_size} (each rank takes an equal slice of every batch)")
        self.n, self.bs, self.seed, self.start, self.steps = n, batch_size, seed, start, steps
        self.per_epoch = n // batch_size
        self.share = batch_size // world_size
        self.offset = rank * self.share

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self):
        perm, epoch = None, -1
        for step in range(self.start, self.steps):
            e, pos = divmod(step, self.per_epoch)
            if e != epoch:
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + e))
                epoch = e
            first = pos * self.bs + self.offset
            yield perm[first:first + self.share].tolist()


def _save_checkpoint(path: Path, net: StitchedSupernet, settings: FinetuneSettings, step: int, optimizer=None,
                     scheduler=None) -> None:
    """The finetuning checkpoint of `net` after `step` steps (optimizer and scheduler None when
    nothing trains), with the routes and settings `load_finetuning_checkpoint` checks."""
    torch_save_atomic({"step": step, "model": net.state_dict(),
                       "optimizer": None if optimizer is None else optimizer.state_dict(),
                       "scheduler": None if scheduler is None else scheduler.state_dict(),
                       "routes": [r.name for r in net.routes], "settings": settings.fingerprint()}, path)


def load_finetuning_checkpoint(path: Path, net: StitchedSupernet, settings: FinetuneSettings) -> dict:
    """The checkpoint at `path` if it was written by a finetuning of `net`'s routes with `settings`
    (protocol included: `stitches_only` enters the settings' fingerprint); KlasError otherwise."""
    from klas.reading import load_checkpoint

    state = load_checkpoint(path, what="finetuning checkpoint", inside=path.parent,
                            fix="delete it to finetune from the start")
    routes = [r.name for r in net.routes]
    if not isinstance(state, dict) or not {"model", "step"} <= set(state):
        raise KlasError(f"checkpoint {path} is not a klas finetuning checkpoint; delete it to finetune from the start")
    if state.get("routes") != routes or state.get("settings") != settings.fingerprint():
        raise KlasError(f"checkpoint {path} belongs to other routes or finetune settings; delete it or "
                        "finetune into another folder")
    return state


def training_plan(net: StitchedSupernet, settings: FinetuneSettings):
    """(optimizer, scheduler, route of every step ``[steps]``) of a finetuning: AdamW over what
    trains (the stitching layers alone with `stitches_only`, whose anchors are frozen here), warm-up
    then cosine decay, and a seeded uniform route schedule (with the anchors frozen only the
    stitches have anything to train: their routes alone are drawn). (None, None, None) when nothing
    trains: the anchors frozen and no stitch in the supernet."""
    if settings.stitches_only:
        for a in net.anchors.values():
            a.requires_grad_(False)
        params = list(net.stitches.parameters())
    else:
        params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        return None, None, None
    optimizer, scheduler = settings.optimizer(params)
    first = len(net.anchor_names) if settings.stitches_only and len(net) > len(net.anchor_names) else 0
    return optimizer, scheduler, first + route_schedule(len(net) - first, settings.steps, settings.seed)


def finetune(net: StitchedSupernet, dataset: torch.utils.data.Dataset, settings: FinetuneSettings,
             out_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Trains `net` in place for `settings.steps` steps on `dataset` ((image, label) pairs);
    checkpoints under `out_dir`, resuming from its checkpoint when there is one.

    Returns {"steps", "resumed_from", "seconds", "final_loss"} (seconds of this call only; final_loss
    None when the checkpoint was already complete), and "nothing_to_train": True when the anchors are
    frozen and the supernet holds no stitch (no step runs; the supernet is saved as it is).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(settings.device)
    net.to(device)
    optimizer, scheduler, schedule = training_plan(net, settings)
    start = 0
    ckpt = out_dir / CHECKPOINT
    if optimizer is None:  # nothing trains (anchors frozen, no stitch): the supernet as it is is the result
        if dist.is_main() and not ckpt.is_file():
            _save_checkpoint(ckpt, net, settings, settings.steps)
        dist.barrier()
        net.eval()
        return {"steps": settings.steps, "resumed_from": settings.steps, "seconds": 0.0, "final_loss": None,
                "nothing_to_train": True}
    if os.path.lexists(ckpt):
        state = load_finetuning_checkpoint(ckpt, net, settings)
        try:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = int(state["step"])
            if not 0 <= start <= settings.steps:
                raise ValueError(f"step {start}")
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise KlasError(f"checkpoint {ckpt} does not fit this supernet ({type(e).__name__}); delete it to "
                            "finetune from the start") from None
    ctx = dist.context()
    batches = StepBatches(len(dataset), settings.batch_size, settings.seed, start, settings.steps,
                          ctx.rank, ctx.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=settings.num_workers)
    model = net
    if ctx.distributed:  # every rank trains the same route at a step; the others' parameters are unused
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=True)

    curve = TrainingLog(out_dir / TRAINING_CSV, ["step", "route", "loss", "lr"], resume_from=start,
                        enabled=dist.is_main())

    def save(step: int) -> None:
        if not dist.is_main():
            return
        curve.flush()  # the curve holds exactly the steps the checkpoint holds
        _save_checkpoint(ckpt, net, settings, step, optimizer, scheduler)

    net.train()
    if settings.stitches_only:
        for a in net.anchors.values():
            a.eval()
    if settings.freeze_bn:
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    began, loss_value = time.perf_counter(), None  # None: no step left to run in this call
    bar = progress_bar(total=settings.steps, initial=start, disable=not progress or not dist.is_main(), desc="finetune",
               unit="step")
    pending: list[tuple[int, int, torch.Tensor, float]] = []  # (step, route, loss on the device, lr), not yet read

    def read_back() -> float | None:
        """The pending steps' losses in one device sync (not one per step): checked finite, written to
        the curve. Runs before every checkpoint, so that a diverged state is never saved."""
        if not pending:
            return loss_value
        values = torch.stack([p[2] for p in pending]).float().cpu().tolist()
        for (step, k, _, lr), value in zip(pending, values):
            if not math.isfinite(value):
                raise KlasError(f"finetuning diverged at step {step} (route {net.routes[k].name}, loss {value}); "
                                f"the last checkpoint in {out_dir} is intact: lower the learning rate and run again")
            curve.row(step=step, route=net.routes[k].name, loss=value, lr=lr)
        pending.clear()
        bar.set_postfix(loss=f"{values[-1]:.3f}")
        return values[-1]

    # the blocks and stitching layers run compiled when the compile mode asks for it in training
    # (klas.compiling), stored channels last where that is faster (klas.memory_format)
    compiled = should_compile(training=True, image_passes=(settings.steps - start) * settings.batch_size)
    with channels_last_models([net], device), compiled_parts(supernet_parts(net), compiled):
        # batches are decoded on a background thread (or by the loader's workers) while a step runs
        for step, (images, labels) in enumerate(prefetched(loader) if settings.num_workers == 0 else loader, start=start):
            k = int(schedule[step])
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with training_autocast(settings.precision, device):
                loss = torch.nn.functional.cross_entropy(model(images, k), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            pending.append((step, k, loss.detach(), lr))
            bar.update(1)
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
                loss_value = read_back()
                save(step + 1)
    bar.close()
    if not ckpt.is_file():  # steps = 0: the untrained supernet is the result
        save(settings.steps)
    curve.close()
    dist.barrier()  # rank 0's last checkpoint is on disk
    net.eval()
    return {"steps": settings.steps, "resumed_from": start, "seconds": time.perf_counter() - began,
            "final_loss": loss_value}
