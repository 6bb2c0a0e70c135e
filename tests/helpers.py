"""Test data builders: learnable synthetic caches, random labelled images."""
from __future__ import annotations

import numpy as np
import torch

from klas.cache import BlockEntry, CacheWriter


class RandomImages(torch.utils.data.Dataset):
    """`n` random images ``[3, 32, 32]`` with random labels of 10 classes (seeded): training data for
    finetuning tests, where the pixels do not matter."""

    def __init__(self, n: int = 40):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, k):
        return self.x[k], int(self.y[k])


def feature_cache(path, n: int, widths, num_classes: int, *, seed: int = 0, data_seed: int = 0,
                  noise: float = 1.0, anchor: str = "test:synthetic", split: str = "train", dtype: str = "float32"):
    """Rows whose every block is a noisy linear image of a one-hot label (so probes can learn it),
    followed by logits of a fixed linear head on the last block. Labels depend on data_seed only,
    so caches of several 'anchors' (seeds) cover the same samples."""
    rng = np.random.default_rng(data_seed)
    labels = rng.integers(0, num_classes, size=n)
    frng = np.random.default_rng(seed + 1000)  # the "anchor": its bases and head
    bases = [frng.standard_normal((num_classes, w)) * 3 for w in widths]
    head = frng.standard_normal((widths[-1], num_classes)) * 0.3
    nrng = np.random.default_rng((seed, data_seed))
    cols, blocks, offset = [], [], 0
    for k, (w, basis) in enumerate(zip(widths, bases), start=1):
        cols.append(basis[labels] + noise * nrng.standard_normal((n, w)))
        blocks.append(BlockEntry(name=f"b{k}", index=k, width=w, offset=offset, grid=(4, 4)))
        offset += w
    cols.append(cols[-1] @ head)
    blocks.append(BlockEntry(name="logits", index=0, width=num_classes, offset=offset, kind="logits"))
    rows = np.concatenate(cols, axis=1).astype(np.float32)
    w = CacheWriter(path, anchor=anchor, split=split, dtype=dtype, blocks=tuple(blocks), num_classes=num_classes,
                    num_samples=n, shard_rows=256,
                    source={"seed": seed, "data_seed": data_seed, "samples": f"synthetic-{data_seed}-{n}-{split}",
                            "classes": [f"c{k}" for k in range(num_classes)]},
                    anchor_info={"flops": {"stem": 100, "blocks": [1000 * w for w in widths], "head": 10 * num_classes},
                                 "flops_unit": "mac",
                                 "weights": f"synthetic-{seed}"})
    w.append(rows.astype(np.float16) if dtype == "float16" else rows, labels)
    w.finish()
    return rows, labels


# -- a real run to damage (tests/test_bad_input.py, tests/test_hostile_input.py) -----------------

REAL_A = "cifar-resnet:8?pretrained=false&seed=1"
REAL_B = "cifar-resnet:14?pretrained=false&seed=2"


def make_real_run(root, shapes_dir):
    """extract -> probes -> score of two small random ResNets on the generated shapes under `root`."""
    from klas.pipeline.cli import main

    cache = root / "cache"
    assert main(["extract", "--anchor", REAL_A, "--anchor", REAL_B, "--data", str(shapes_dir), "--out", str(cache),
                 "--batch-size", "16", "--shard-rows", "32", "--quiet"]) == 0
    assert main(["probes", "--cache", str(cache), "--epochs", "1", "--batch-size", "32", "--quiet"]) == 0
    assert main(["score", "--cache", str(cache), "--no-plots"]) == 0
    return root


def tree(root) -> dict:
    """sha256 of every file under `root`, by relative path."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def rewrite_crc(cache_dir, shard: int) -> None:
    """Makes the manifest agree with a shard edited on purpose (so that only the values are bad)."""
    import json

    from klas.cache.format import checksum

    m = json.loads((cache_dir / "manifest.json").read_text())
    m["shards"][shard]["crc32c"] = checksum((cache_dir / m["shards"][shard]["file"]).read_bytes())
    (cache_dir / "manifest.json").write_text(json.dumps(m))


def patch_bytes(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def make_scores(stages_per_anchor, seed: int, widths=(16, 32, 64)):
    """Anchors of 3 stages (grids 8/4/2) with n blocks per stage, random positive Θ (klas Scores)."""
    from klas.anchors.base import PartCounts
    from klas.scoring.scores import AnchorEntry, Scores

    gen = torch.Generator().manual_seed(seed)
    anchors, offset = [], 0
    for a, n in enumerate(stages_per_anchor):
        grids = [[8, 8]] * n + [[4, 4]] * n + [[2, 2]] * n
        ws = [widths[0]] * n + [widths[1]] * n + [widths[2]] * n
        blocks = [int(1000 * w * g[0] * g[1] / 64) for w, g in zip(ws, grids)]
        anchors.append(AnchorEntry(name=f"a{a}", spec=f"test:a{a}", depth=3 * n, flops=PartCounts(500, tuple(blocks), 100), widths=ws, grids=grids, offset=offset))
        offset += 3 * n
    theta = torch.rand(offset, offset, generator=gen) * 2 + 0.01
    theta.fill_diagonal_(0)
    return Scores(anchors=anchors, theta_all=theta, floor=1e-6, temperature=1.0, split="val", caches={})
