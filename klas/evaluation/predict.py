"""A cheap prediction of each stitch's accuracy after finetuning: its least-squares stitch's own top-1.

For one anchor pair (f, g) and its configurations (i, j): every stitching layer is fitted by least
squares on the calibration images (exactly the initialisation the supernet's finetuning starts
from), and the stitched network f_1..f_i → stitch → g_{j+1}..g_m is counted on held-out images
(D_v). No training step is taken. The recovery test measured this accuracy as the best available
predictor of a configuration's finetuned accuracy (docs/RESULTS.md); `klas-budget` selects on it.

The anchors' own top-1 on the same images is counted beside it, so that a stitch can be compared
with the routes it would compete with.

    pred = predict_pair(f, g, [(1, 3), (2, 5)], calibration, val)   # {"configurations": {(i, j): top-1}, ...}

Shared with the recovery test: `least_squares_stitches` and `count_correct` (its accuracy right
after the fit is this prediction, on its test images).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from klas.compiling import compiled_parts, should_compile
from klas.memory_format import channels_last_models
from klas.errors import CacheError
from klas.evaluation.anchor_eval import anchor_correct
from klas.extraction.data import DecodedOnce
from klas.files import write_json_atomic
from klas.predictions import FORMAT, read_predictions
from klas.progress import progress_bar

__all__ = ["least_squares_stitches", "count_correct", "predict_pair", "prediction_inputs", "load_or_predict"]


def least_squares_stitches(f, g, i: int, js: Sequence[int], calibration: torch.Tensor, *, seed: int,
                           device: str = "cpu"):
    """The stitched networks (i, j) for every j in `js`, their stitching layers fitted by least squares
    on `calibration` ``[B, C, H, W]``, every parameter frozen. Returns (net, back): the supernet
    (klas.stitching.stitch.StitchedSupernet) whose `stitches` are in the order of `js`, and
    ``back(s, h)``, g from block js[s] + 1 on the s-th stitch's output."""
    from klas.stitches import Route
    from klas.stitching.stitch import StitchedSupernet

    net = StitchedSupernet([f, g], [Route(f.name, g.name, i, j) for j in js]).to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net.init_stitches(calibration.to(device), seed=seed)

    def back(s: int, h: torch.Tensor) -> torch.Tensor:
        return g.forward_back(h, js[s])

    return net, back


def count_correct(front_outputs: Callable[[], Iterator], stitches, back) -> list[tuple[int, int]]:
    """(correct, total) per stitch over the batches ``(h [B, ...] after f's block i, labels [B])``."""
    counts = [[0, 0] for _ in stitches]
    for h, y in front_outputs():
        for s, stitch in enumerate(stitches):
            pred = back(s, stitch(h)).argmax(dim=1)
            counts[s][0] += int((pred == y).sum())
            counts[s][1] += len(y)
    return [(c, t) for c, t in counts]


@torch.no_grad()
def predict_pair(f, g, configs: Sequence[tuple[int, int]], calibration: torch.Tensor, val, *, seed: int = 0,
                 device: str = "cpu", eval_batch: int = 500, progress: bool = True) -> dict:
    """Every configuration's least-squares top-1 on `val` (a dataset of (image, label)), and both
    anchors' own top-1 on the same images.

    Returns ``{"configurations": {(i, j): {"top1", "correct", "total"}}, "anchors": {name: {...}},
    "seconds": float}``. The configurations of one source block share f's front per batch."""
    began = time.perf_counter()
    f.to(device).eval()
    g.to(device).eval()
    # every source block and both anchors read the same D_v batches: decoded once
    loader = DecodedOnce(lambda: torch.utils.data.DataLoader(val, batch_size=eval_batch),
                         len(val) * calibration[0].numel() * calibration.element_size())
    compiled = should_compile(training=False, image_passes=len(val) * (len(configs) + 2))
    with channels_last_models([f, g], device), compiled_parts([*f.blocks, *g.blocks], compiled):
        by_source: dict[int, list[int]] = {}
        for i, j in configs:
            by_source.setdefault(i, []).append(j)
        out: dict[tuple[int, int], dict] = {}
        for i in progress_bar(sorted(by_source), desc=f"predict {f.name} -> {g.name}", unit="source block",
                              disable=not progress):
            js = by_source[i]
            net, back = least_squares_stitches(f, g, i, js, calibration, seed=seed, device=device)

            def fronts():
                for x, y in loader:
                    yield f.forward_front(x.to(device), i), y.to(device)

            for j, (c, t) in zip(js, count_correct(fronts, list(net.stitches), back)):
                out[(i, j)] = {"top1": 100.0 * c / max(t, 1), "correct": c, "total": t}
        anchors = {}
        for a in (f, g):
            c, t = anchor_correct(a, loader, device)
            anchors[a.name] = {"top1": 100.0 * c / max(t, 1), "correct": c, "total": t}
    return {"configurations": out, "anchors": anchors, "seconds": time.perf_counter() - began}


# -- one file per anchor pair, reused only for the same inputs -------------------------------------

def prediction_inputs(f, g, calibration_digest: str, val_digest: str, *, calibration_images: int, seed: int) -> dict:
    """What a pair's predictions are computed from: both anchors (names, weights digests), the
    calibration and D_v samples (digests, in order), the calibration size and the seed."""
    return {"source": f.name, "target": g.name, "source_weights": f.weights_digest(),
            "target_weights": g.weights_digest(), "calibration_samples": calibration_digest,
            "val_samples": val_digest, "calibration_images": calibration_images, "seed": seed}


def load_or_predict(path: Path, f, g, configs: Sequence[tuple[int, int]], calibration_set, val, *,
                    calibration_images: int, seed: int, device: str = "cpu", eval_batch: int = 500,
                    progress: bool = True, log=print) -> dict:
    """The predictions of `configs` of (f, g) from `path` when it records exactly these inputs,
    else computed (`predict_pair`) and written there. Returns what `read_predictions` returns.

    calibration_set, val: datasets of (image, label) with `samples_digest()`; the first
    `calibration_images` of calibration_set fit the stitches (as the supernet's initialisation does)."""
    count = min(calibration_images, len(calibration_set))
    calib = torch.utils.data.Subset(calibration_set, range(count))
    from klas.extraction.data import samples_digest

    calib_digest = samples_digest(calibration_set.source, calibration_set.indices[:count])
    inputs = prediction_inputs(f, g, calib_digest, val.samples_digest(), calibration_images=count, seed=seed)
    if path.exists():
        try:
            return read_predictions(path, configs, inputs=inputs)
        except CacheError as e:
            log(f"[predict] {e}: predicting again")
    images = torch.stack([x for x, _ in calib])
    pred = predict_pair(f, g, configs, images, val, seed=seed, device=device, eval_batch=eval_batch,
                        progress=progress)
    doc = {**FORMAT, "inputs": inputs, "seconds": pred["seconds"],
           "what": "top-1 (%) on D_v of each configuration's least-squares stitch, no finetuning; the anchors' own "
                   "top-1 on the same images",
           "configurations": [{"i": i, "j": j, **v} for (i, j), v in sorted(pred["configurations"].items())],
           "anchors": pred["anchors"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)
    log(f"[predict] {f.name} -> {g.name}: {len(configs)} configurations on {len(val)} D_v images in "
        f"{pred['seconds']:.0f} s")
    return read_predictions(path, configs, inputs=inputs)
