"""Top-1 accuracy of an anchor on a dataset split: the first sanity check of an anchor."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

from klas.anchors import Anchor, load_anchor
from klas.extraction.data import make_loader, split_for_anchor
from klas.memory_format import channels_last_models
from klas.progress import progress_bar

__all__ = ["AnchorAccuracy", "evaluate_anchor", "anchor_correct"]


@dataclass(frozen=True)
class AnchorAccuracy:
    anchor: str
    split: str
    top1: float  # percent
    correct: int
    total: int
    gflops: float  # per image

    def to_json(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def anchor_correct(anchor, batches, device: str = "cpu") -> tuple[int, int]:
    """(correct, total) of the anchor's own top-1 over `batches` of (images [B, C, H, W], labels [B])."""
    correct, total = torch.zeros((), dtype=torch.int64), 0  # on the CPU: one sync per batch is fine here
    for images, labels in batches:
        correct += (anchor(images.to(device)).argmax(dim=1).cpu() == labels).sum()
        total += len(labels)
    return int(correct), total


@torch.inference_mode()
def evaluate_anchor(
    anchor: str | Anchor,
    data: str | os.PathLike,
    *,
    split: str = "test",
    batch_size: int = 256,
    device: str = "cpu",
    limit: int | None = None,
    num_workers: int = 0,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> AnchorAccuracy:
    """Top-1 of the anchor's own forward on `split` of the data root."""
    anchor = load_anchor(anchor) if isinstance(anchor, str) else anchor
    anchor = anchor.to(device).eval()
    source, indices = split_for_anchor(data, split, anchor, val_fraction=val_fraction, seed=seed, limit=limit)
    loader = make_loader(source, indices, anchor, batch_size=batch_size, num_workers=num_workers)
    with channels_last_models([anchor], device):
        n, total = anchor_correct(anchor, progress_bar(loader, disable=not progress,
                                                       desc=f"eval {anchor.name}/{split}", unit="batch"), device)
    return AnchorAccuracy(anchor=anchor.spec, split=split, top1=100.0 * n / max(total, 1), correct=n,
                          total=total, gflops=anchor.flops.total / 1e9)
