"""`klas demo`: the whole pipeline on a fresh machine, from data that ships with scikit-learn.

1. scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) written out as 32x32 PNGs
   (each digit at a random place under pixel noise), a seeded 75/25 train/test split:
   ``<out>/data/{train,test}/<digit>/<k>.png``;
2. a small family of anchors: CIFAR-style ResNets of depth 8, 14 and 20 (1, 2, 3 blocks per stage),
   each trained from scratch on the training images, saved as weights-only checkpoints
   ``<out>/anchors/resnet<depth>.th`` and loaded through ``cifar-resnet:<depth>:<path>``. On the
   shifted, noisy digits depth buys accuracy, as in a pretrained family;
3. `klas run` on them: `klas-budget` (METHOD.md §8) against KLAS and SN-Net's nearest stitching,
   equal finetuning budgets, one report.

With `data` and `anchors` given (e.g. the shared CIFAR-10 family) step 1 and 2 are skipped and the
run uses those instead. Every step skips what is already complete, so a second call is quick.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from klas.files import torch_save_atomic, write_json_atomic

__all__ = ["demo", "demo_config", "write_digits", "train_demo_anchors", "DEMO_DEPTHS", "DEMO_EPOCHS"]

DEMO_DEPTHS = (8, 14, 20)
DEMO_EPOCHS = (8, 8, 8)  # per depth


def write_digits(root: Path, *, seed: int = 0, test_fraction: float = 0.25) -> Path:
    """scikit-learn's digits as 32x32 PNGs in train/ and test/ class folders, made harder so that
    capacity matters: each digit, upscaled to 16x16, sits at a random place on a grey 32x32 canvas
    under Gaussian pixel noise (seeded per image)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    done = root / "digits.json"
    if done.is_file():
        return root
    digits = load_digits()
    perm = np.random.default_rng(seed).permutation(len(digits.images))
    n_test = int(round(len(perm) * test_fraction))
    for split, idx in (("test", perm[:n_test]), ("train", perm[n_test:])):
        for k in idx:
            rng = np.random.default_rng((seed, int(k)))
            glyph = Image.fromarray((digits.images[k] / 16.0 * 255.0).astype(np.uint8)).resize((16, 16), Image.BILINEAR)
            canvas = np.full((32, 32), 64.0)
            dy, dx = rng.integers(0, 17, size=2)
            canvas[dy:dy + 16, dx:dx + 16] += 0.75 * np.asarray(glyph, dtype=np.float64)
            canvas += rng.normal(0.0, 40.0, size=canvas.shape)
            folder = root / split / str(int(digits.target[k]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).convert("RGB").save(folder / f"{k:04d}.png")
    write_json_atomic(done, {"source": "sklearn.datasets.load_digits, shifted on a 32x32 canvas with noise",
                             "seed": seed, "test": n_test, "train": len(perm) - n_test})
    return root


def train_demo_anchors(data: Path, out: Path, *, seed: int = 0, log=print) -> list[str]:
    """Trains one ResNet per depth in DEMO_DEPTHS on data/train; returns their anchor specs."""
    from klas.anchors.cifar_resnet import CIFAR_MEAN, CIFAR_STD, CifarResNet
    from klas.extraction.data import ImageDataset, resolve_split

    out.mkdir(parents=True, exist_ok=True)
    source, indices = resolve_split(data, "test")
    # the normalisation the cifar-resnet adapter applies when the anchors are loaded again
    test = ImageDataset(source, indices, input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD)
    train_source = resolve_split(data, "train")[0]
    train = ImageDataset(train_source, np.arange(len(train_source)), input_size=(3, 32, 32), mean=CIFAR_MEAN,
                         std=CIFAR_STD)
    train_x = torch.stack([train[k][0] for k in range(len(train))])
    train_y = torch.tensor([train[k][1] for k in range(len(train))])
    test_x = torch.stack([test[k][0] for k in range(len(test))])
    test_y = torch.tensor([test[k][1] for k in range(len(test))])
    specs = []
    for depth, epochs in zip(DEMO_DEPTHS, DEMO_EPOCHS):
        path = out / f"resnet{depth}.th"
        spec = f"cifar-resnet:{depth}:{path}"
        specs.append(spec)
        if path.is_file():
            continue
        torch.manual_seed(seed + depth)
        model = CifarResNet(depth, num_classes=10)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        steps = epochs * (len(train_x) // 64)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        gen = torch.Generator().manual_seed(seed + depth)
        began = time.perf_counter()
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(train_x), generator=gen)
            for s in range(len(train_x) // 64):
                idx = perm[s * 64:(s + 1) * 64]
                loss = torch.nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            acc = 100.0 * float((model(test_x).argmax(1) == test_y).float().mean())
        torch_save_atomic(model.state_dict(), path)
        log(f"[anchors] ResNet-{depth}: {epochs} epochs in {time.perf_counter() - began:.0f} s, "
            f"test top-1 {acc:.1f}% -> {path}")
    return specs


def demo_config(out: Path, data: str, anchors: list[str], *, quick: bool = True):
    """The run config of the demo (small budgets on the digits; the shared family's own otherwise)."""
    from klas.pipeline.config import validate_config

    raw = {
        "name": "klas demo", "out": str(out / "run"), "anchors": anchors, "data": {"root": data},
        # the digits demo is minutes long: a first compile would not pay (klas.compiling)
        "compile": "off" if quick else "auto",
        "extract": {"batch_size": 256},
        "probes": {"epochs": 4, "batch_size": 128},
        # klas-budget first: the report compares the first method with each of the others. The digits
        # demo's budget is a tenth of the CIFAR configs', and so is its least number of steps per route.
        "select": {"method": "klas", "compare": ["klas-budget", "klas", "snnet-nearest"],
                   **({"budget_min_route_steps": 10} if quick else {})},
        "finetune": {"steps": 150 if quick else 1500, "batch_size": 32 if quick else 64, "lr": 2e-4,
                     "checkpoint_every": 50 if quick else 100},
        "evaluate": {"batch_size": 500},
    }
    return validate_config(raw)


def demo(out: str | os.PathLike = "runs/demo", *, data: str | None = None, anchors: list[str] | None = None,
         progress: bool = True, log=print) -> Path:
    """Runs the demo; returns the report folder."""
    from klas.pipeline.run import run

    out = Path(out)
    if (data is None) != (anchors is None):
        from klas.errors import KlasError

        raise KlasError("give both --data and --anchors (a family of your own), or neither (the digits demo)")
    if data is None:
        data_dir = write_digits(out / "data")
        anchors = train_demo_anchors(data_dir, out / "anchors", log=log)
        cfg = demo_config(out, str(data_dir), anchors, quick=True)
    else:
        cfg = demo_config(out, data, anchors, quick=False)
    write_json_atomic(out / "demo-config.json", cfg.to_json())
    log(f"demo config: {out / 'demo-config.json'}")
    return run(cfg, progress=progress, log=log)
