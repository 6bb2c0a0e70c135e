"""Extraction benchmark: `klas.extract` of k anchors against the sum of their bare forwards.

    pytest bench/bench_extract.py [--bench-data ROOT] --benchmark-json=RUN.json

- bare (the baseline): the same images, decoded and normalised beforehand (not timed), then for each
  anchor `torch.inference_mode()` forwards at the same batch size, the models stored as extraction
  stores them (klas.memory_format: channels last on the CPU by default): what the models themselves cost;
- klas: `klas.extract` of the same anchors on the same images into a fresh folder: decoding, every
  block's pooled output, the checks, float16 conversion, shards with checksums, the manifest.
- bare, decoding in the loop: the same forwards over `DataLoader(ImageDataset)` batches, decoded as
  they are needed (one decode per image for all anchors, as klas.extract does): what a plain loop
  over the images costs, decoding counted the same way on both sides. The group's baseline.
Best of 3 rounds each, no warm-up round (a round is long enough that first-call costs do not
matter). The ratio (baseline best / klas best) is the fraction of a plain decode-and-forward loop's speed
that extraction reaches (target ≥ 0.95); `bare`'s shows what decoding costs.

A second group, `extract, interleaved`, times klas and the plain decode-and-forward loop in 6 rounds
of one run each, taking turns (the order alternating): on a shared machine whose speed drifts by
more than the gap between the peers, the consecutive rounds of the first group can each fall in
another phase of the drift. It records the ratio round by round (plain loop seconds / klas seconds:
median, lowest, highest) beside each peer's median seconds; its `best s` is the whole group's time.

A third group, `decode`, times the JPEG decoders on the same images' bytes (read beforehand): PIL
(the baseline, what ImageDataset uses), PIL with `draft`, and torchvision's libjpeg-turbo
`decode_jpeg`, one image a call and in batches; each peer's pixels are compared with PIL's. Anchors: ResNet-20 and ResNet-56 with random weights (the cost does not depend on
the weights); 5,000 train images at batch 256 (smoke: 64 images at batch 32).
"""
from __future__ import annotations

import io
import shutil
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from common import interleaved_seconds, paired_ratios, run_peer

from klas.anchors import load_anchor
from klas.cache import read_manifest
from klas.extraction.data import ImageDataset, split_for_anchor
from klas.extraction.extract import cached_anchors, extract
from klas.memory_format import channels_last_models

SPECS = ("cifar-resnet:20?pretrained=false", "cifar-resnet:56?pretrained=false")
GROUP = "extract"
PAIRED_GROUP = "extract, interleaved"
PAIRED_ROUNDS = 6
BASELINE = "bare, decoding in the loop"


def sizes(smoke: bool) -> tuple[int, int, int]:
    """(images, batch size, timed rounds)."""
    return (64, 32, 1) if smoke else (5000, 256, 3)


@cache
def anchors():
    return tuple(load_anchor(s).eval() for s in SPECS)


def dataset(data: Path, images: int) -> ImageDataset:
    """The images klas.extract reads for the train split (same split, seed and limit)."""
    first = anchors()[0]
    source, indices = split_for_anchor(data, "train", first, val_fraction=0.1, seed=0, limit=images)
    return ImageDataset(source, indices, input_size=first.input_size, mean=first.mean, std=first.std)


@cache
def decoded(data: Path, images: int) -> torch.Tensor:
    """`dataset`'s images, decoded and normalised [n, 3, H, W]."""
    ds = dataset(data, images)
    return torch.stack([ds[k][0] for k in range(len(ds))])


def bare(x: torch.Tensor, batch_size: int) -> None:
    with torch.inference_mode(), channels_last_models(anchors(), "cpu"):  # the layout extraction uses
        for anchor in anchors():
            for start in range(0, len(x), batch_size):
                anchor(x[start:start + batch_size])


def bare_decoding(ds: ImageDataset, batch_size: int) -> None:
    with torch.inference_mode(), channels_last_models(anchors(), "cpu"):
        for x, _ in torch.utils.data.DataLoader(ds, batch_size=batch_size):
            for anchor in anchors():
                anchor(x)


def test_bare_decoding_in_the_loop(benchmark, image_root, smoke):
    images, batch_size, rounds = sizes(smoke)
    ds = dataset(image_root, images)
    run_peer(benchmark, lambda: bare_decoding(ds, batch_size), group=GROUP, peer="bare, decoding in the loop",
             baseline=BASELINE, rounds=rounds, warmup=False, work=len(ds) * len(SPECS), work_unit="images",
             images=len(ds), batch=batch_size, data=image_root.name)


def test_bare(benchmark, image_root, smoke):
    images, batch_size, rounds = sizes(smoke)
    x = decoded(image_root, images)
    run_peer(benchmark, lambda: bare(x, batch_size), group=GROUP, peer="bare", baseline=BASELINE, rounds=rounds,
             warmup=False,
             work=len(x) * len(SPECS),
             work_unit="images", images=len(x), batch=batch_size, data=image_root.name)


def fresh_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="klas-bench-extract-"))


def klas_extract(image_root: Path, images: int, batch_size: int, out: Path) -> None:
    extract(list(anchors()), image_root, out, splits=("train",), batch_size=batch_size, limit=images, progress=False)


def check_and_remove(out: Path, n: int) -> None:
    """Checks that extraction wrote `n` rows for every anchor, then removes its folder."""
    try:
        rows = {name: read_manifest(out / name / "train").num_samples for name in cached_anchors(out, "train")}
        assert len(rows) == len(SPECS) and set(rows.values()) == {n}, f"extraction wrote {rows}, expected {n} rows each"
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_klas(benchmark, image_root, smoke):
    images, batch_size, rounds = sizes(smoke)
    n = len(decoded(image_root, images))
    run_peer(benchmark, lambda out: klas_extract(image_root, images, batch_size, out),
             setup=lambda: ((fresh_folder(),), {}), teardown=lambda out: check_and_remove(out, n), group=GROUP,
             peer="klas", baseline=BASELINE, rounds=rounds, warmup=False, work=n * len(SPECS), work_unit="images",
             images=n, batch=batch_size, data=image_root.name)


def test_klas_paired(benchmark, image_root, smoke):
    """klas against the plain decode-and-forward loop in interleaved rounds (one of each per round,
    the order alternating): the machine's drift between the groups' consecutive rounds above falls on
    both alike, and the ratio is taken round by round."""
    images, batch_size, _ = sizes(smoke)
    rounds = 2 if smoke else PAIRED_ROUNDS
    ds = dataset(image_root, images)
    n = len(ds)

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def klas_once():
        out = fresh_folder()
        seconds = timed(lambda: klas_extract(image_root, images, batch_size, out))
        check_and_remove(out, n)
        return seconds

    peers = {BASELINE: lambda: timed(lambda: bare_decoding(ds, batch_size)), "klas": klas_once}
    seconds = run_peer(benchmark, lambda: interleaved_seconds(peers, rounds), group=PAIRED_GROUP,
                       peer="klas and the plain loop, interleaved", baseline="klas and the plain loop, interleaved",
                       rounds=1, warmup=False, images=n, batch=batch_size, data=image_root.name)
    benchmark.extra_info.update(paired_ratios(seconds[BASELINE], seconds["klas"]))


# ---- the JPEG decoders ----------------------------------------------------------------------------

@cache
def jpeg_bytes(data: Path, images: int) -> tuple[bytes, ...]:
    """The bytes of `dataset`'s images as JPEGs (re-encoded at quality 90 where a set holds other formats)."""
    ds = dataset(data, images)
    out = []
    for i in ds.indices:
        raw = ds.source.read_bytes(int(i))
        with Image.open(io.BytesIO(raw)) as img:
            if img.format != "JPEG":
                buffer = io.BytesIO()
                img.convert("RGB").save(buffer, format="JPEG", quality=90)
                raw = buffer.getvalue()
        out.append(raw)
    return tuple(out)


def pil(blobs) -> list[np.ndarray]:
    out = []
    for raw in blobs:
        with Image.open(io.BytesIO(raw)) as img:
            out.append(np.asarray(img.convert("RGB")))
    return out


def pil_draft(blobs) -> list[np.ndarray]:
    out = []
    for raw in blobs:
        with Image.open(io.BytesIO(raw)) as img:
            img.draft("RGB", img.size)
            out.append(np.asarray(img.convert("RGB")))
    return out


def _torchvision():
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        pytest.skip("torchvision is not installed")
    return decode_jpeg, ImageReadMode.RGB


def torchvision_single(blobs) -> list[np.ndarray]:
    decode_jpeg, rgb = _torchvision()
    return [decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=rgb).permute(1, 2, 0).numpy()
            for b in blobs]


def torchvision_batched(blobs) -> list[np.ndarray]:
    decode_jpeg, rgb = _torchvision()
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    return [t.permute(1, 2, 0).numpy() for t in decode_jpeg(tensors, mode=rgb)]


DECODERS = {"PIL": pil, "PIL, draft": pil_draft, "torchvision decode_jpeg": torchvision_single,
            "torchvision decode_jpeg, batched": torchvision_batched}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's image decoding, deprecated since 0.29
@pytest.mark.parametrize("peer", list(DECODERS))
def test_decoder(benchmark, image_root, smoke, peer):
    images, _, rounds = sizes(smoke)
    blobs = jpeg_bytes(image_root, images)
    decode = DECODERS[peer]
    got, want = decode(blobs), pil(blobs)
    differ = sum(a.shape != b.shape or bool((a != b).any()) for a, b in zip(got, want))
    run_peer(benchmark, lambda: decode(blobs), group="decode", peer=peer, baseline="PIL", rounds=max(rounds, 3),
             work=len(blobs), work_unit="images", images=len(blobs), images_unlike_pil=differ, data=image_root.name)
