"""Anchor adaptation: each anchor finetuned alone on the run's training data D_t before extraction.

Anchors trained on other data than the run's (the shared CIFAR ResNets, trained on PNG CIFAR-10,
run here on its JPEG copy) would otherwise adapt during the supernet's finetuning, and the
comparison of selections would mostly measure that adaptation (METHOD.md §6). Every method then
starts from the same adapted anchors.

`adapt_anchor` trains one anchor (all its parameters, BatchNorm statistics frozen as in
finetuning) through klas.stitching.finetune, so it checkpoints and resumes the same way, and writes the
adapted weights as ``<dir>/weights.safetensors`` with the digest of the weights it started from;
`apply_adapted` loads them into a freshly built anchor after checking that digest, the keys and
the shapes.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from klas.errors import CacheError
from klas.files import save_safetensors_atomic, write_json_atomic
from klas.reading import load_safetensors, read_json

__all__ = ["adapt_anchor", "apply_adapted", "WEIGHTS", "INFO"]

WEIGHTS = "weights.safetensors"
INFO = "adapted.json"


def adapt_anchor(anchor, dataset, settings, out_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Finetunes `anchor` alone on `dataset` with `settings` (klas.stitching.finetune.FinetuneSettings) and
    writes its weights under `out_dir`; returns the finetuning statistics."""
    from klas.stitching.finetune import finetune
    from klas.stitching.stitch import StitchedSupernet

    out_dir = Path(out_dir)
    start = anchor.weights_digest()
    net = StitchedSupernet([anchor], [])
    stats = finetune(net, dataset, settings, out_dir / "training", progress=progress)
    state = {k: v.detach().cpu().contiguous() for k, v in anchor.model.state_dict().items()}
    save_safetensors_atomic(state, out_dir / WEIGHTS)
    write_json_atomic(out_dir / INFO, {"anchor": anchor.spec, "started_from": start,
                                       "adapted": anchor.weights_digest(), "steps": settings.steps,
                                       "settings": settings.fingerprint(), "final_loss": stats["final_loss"]})
    return stats


def apply_adapted(anchor, out_dir: str | os.PathLike):
    """Loads the adapted weights of `out_dir` into `anchor` (built from its spec); CacheError when
    they were adapted from other weights or do not fit. Returns the anchor."""
    out_dir = Path(out_dir)
    fix = f"delete {out_dir} to adapt again"
    info = read_json(out_dir / INFO, what="adaptation record", error=CacheError, inside=out_dir, fix=fix)
    if info.get("started_from") != anchor.weights_digest():
        raise CacheError(f"{out_dir} holds an adaptation of other weights of {anchor.spec} (the checkpoint changed "
                         f"since); {fix}")
    state = load_safetensors(out_dir / WEIGHTS, what="adapted weights", error=CacheError, inside=out_dir, fix=fix)
    own = anchor.model.state_dict()
    if set(state) != set(own) or any(tuple(state[k].shape) != tuple(own[k].shape) for k in own):
        raise CacheError(f"{out_dir / WEIGHTS} does not fit {anchor.spec}; {fix}")
    if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise CacheError(f"{out_dir / WEIGHTS} holds NaN/Inf weights; {fix}")
    anchor.model.load_state_dict(state)
    if anchor.weights_digest() != info.get("adapted"):
        raise CacheError(f"{out_dir / WEIGHTS} is not the adaptation {out_dir / INFO} records; {fix}")
    return anchor.eval()
