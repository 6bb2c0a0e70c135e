"""The CIFAR-10 zoo anchors against the upstream model definitions (the shared reference/ folder):
same weights, same logits on real test images. Skipped without the shared folder."""
from __future__ import annotations

import importlib.util
import io
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from klas.anchors import load_anchor
from klas.settings import shared_dir

ZOO = shared_dir() / "models" / "cifar10-zoo"
pytestmark = [pytest.mark.shared, pytest.mark.skipif(not (ZOO / "reference").is_dir(), reason="no shared zoo")]


def _reference(name: str):
    """The upstream definitions module of reference/<name>/ (read as an oracle, not part of klas)."""
    path = next((ZOO / "reference" / name).glob("*.py"))
    spec = importlib.util.spec_from_file_location(f"zoo_reference_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _test_images(n: int = 64) -> torch.Tensor:
    """The first n images of the shared test.zip as [n, 3, 32, 32] in [0, 1], decoded here with PIL."""
    images = []
    with zipfile.ZipFile(shared_dir() / "data" / "cifar10" / "test.zip") as z:
        names = sorted(i for i in z.namelist() if not i.endswith("/"))[::157][:n]
        for name in names:
            with Image.open(io.BytesIO(z.read(name))) as img:
                images.append(torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0))
    return torch.stack(images).permute(0, 3, 1, 2).contiguous()


def _upstream(spec: str):
    """(model, mean, std) built by the upstream code from the same checkpoint."""
    name = spec.split(":")[1].split("?")[0]
    seed = spec.split("seed=")[1] if "seed=" in spec else "0"
    if name in ("resnet", "resnet-preact", "googlenet", "densenet"):
        ref = _reference("uvadlc")
        return ref.load(ZOO / f"{name.replace('-', '_')}.ckpt"), ref.MEAN, ref.STD
    if name in ("tiny10", "resnet20w1"):
        ref = _reference("drfrankenstein")
        return ref.load(ZOO / f"{name}_seed{seed}.pt"), ref.MEAN, ref.STD
    ref = _reference("convmixer")
    model = ref.ConvMixer(256, 8, kernel_size=9, patch_size=4, n_classes=10)
    state = torch.load(ZOO / "convmixer256_8.pth", map_location="cpu", weights_only=True)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval(), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


@pytest.mark.parametrize("spec", ["cifar-zoo:resnet", "cifar-zoo:resnet-preact", "cifar-zoo:googlenet",
                                  "cifar-zoo:densenet", "cifar-zoo:convmixer", "cifar-zoo:tiny10?seed=0",
                                  "cifar-zoo:tiny10?seed=1", "cifar-zoo:resnet20w1?seed=0",
                                  "cifar-zoo:resnet20w1?seed=1"])
def test_zoo_anchor_gives_the_upstream_models_logits(spec):
    x = _test_images()
    anchor = load_anchor(spec)
    model, mean, std = _upstream(spec)
    with torch.no_grad():
        want = model((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        got = anchor(x)  # [0, 1] images: the anchor normalises in its stem
        cut = anchor.forward_back(anchor.forward_front(x, anchor.depth // 2), anchor.depth // 2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cut, want, atol=1e-4, rtol=1e-4)
    assert (want.argmax(1) == got.argmax(1)).all()


def test_the_seeds_of_one_architecture_are_different_models():
    a, b = load_anchor("cifar-zoo:tiny10?seed=0"), load_anchor("cifar-zoo:tiny10?seed=1")
    assert a.name != b.name and a.weights_digest() != b.weights_digest()


def _split(anchor, split: str, limit: int):
    from klas.extraction.data import ImageDataset, split_for_anchor

    source, indices = split_for_anchor(shared_dir() / "data" / "cifar10", split, anchor, limit=limit, seed=0)
    return ImageDataset(source, indices, input_size=anchor.input_size, mean=anchor.mean, std=anchor.std)


@pytest.mark.slow
def test_least_squares_stitches_across_architectures_work_on_real_weights():
    """The zoo's ResNet-20 (residual blocks) into its GoogLeNet (inception blocks), as loaded: 1x1
    stitches fitted by least squares on 256 training images, nothing trained, on 1,000 test images
    (standard error ~1.5 points). With the anchors adapted and 5,000 test images the recovery test
    (docs/RESULTS.md §4) measures 68.5 / 68.0 / 49.7% right after the fit for these three; here each
    fitted stitch must stay well above chance (10%) and above its random start."""
    from klas.evaluation.evaluate import evaluate_routes
    from klas.stitching.stitch import StitchedSupernet

    f, g = load_anchor("cifar-zoo:resnet"), load_anchor("cifar-zoo:googlenet")
    configs = [(1, 1), (3, 1), (5, 3)]
    calibration = torch.stack([x for x, _ in _split(f, "train", 256)])
    test = torch.utils.data.DataLoader(_split(f, "test", 1000), batch_size=500)
    fitted = StitchedSupernet([f, g], [(f.name, g.name, i, j) for i, j in configs])
    fitted.init_stitches(calibration)
    untrained = StitchedSupernet([f, g], [(f.name, g.name, i, j) for i, j in configs])
    top1 = {r.name: r.top1 for r in evaluate_routes(fitted, test, progress=False)}
    start = {r.name: r.top1 for r in evaluate_routes(untrained, test, progress=False)}
    assert min(top1[f.name], top1[g.name]) > 78, top1
    floors = {(1, 1): 50, (3, 1): 40, (5, 3): 22}
    for (i, j), floor in floors.items():
        name = f"{f.name}:{i}->{g.name}:{j}"
        assert top1[name] >= floor and start[name] < 20 and top1[name] > start[name] + 10, (name, top1, start)


@pytest.mark.slow
def test_a_least_squares_stitch_between_two_tiny10_seeds_keeps_their_accuracy():
    """The model-stitching literature's basic check, quick version: Tiny10 seed 0's first 7 layers,
    a 1x1 stitch fitted by least squares on 256 training images, seed 1's last layer and head.
    Measured on 5,000 test images (docs/RESULTS.md): anchors 77.6 / 77.7%, this stitch 75.3%; here
    on 1,000 images (standard error ~1.3 points) it must stay within 6 points of the weaker anchor,
    while the same stitch left at its random initialisation falls far below."""
    from klas.evaluation.evaluate import evaluate_routes
    from klas.extraction.data import ImageDataset, split_for_anchor
    from klas.stitching.stitch import StitchedSupernet

    f, g = load_anchor("cifar-zoo:tiny10?seed=0"), load_anchor("cifar-zoo:tiny10?seed=1")
    data = shared_dir() / "data" / "cifar10"

    def images(split, limit):
        source, indices = split_for_anchor(data, split, f, limit=limit, seed=0)
        return ImageDataset(source, indices, input_size=f.input_size, mean=f.mean, std=f.std)

    calibration = torch.stack([x for x, _ in images("train", 256)])
    test = torch.utils.data.DataLoader(images("test", 1000), batch_size=500)
    untrained = StitchedSupernet([f, g], [(f.name, g.name, 7, 7)])
    fitted = StitchedSupernet([f, g], [(f.name, g.name, 7, 7)])
    fitted.init_stitches(calibration)
    top1 = {r.name: r.top1 for r in evaluate_routes(fitted, test, progress=False)}
    random_top1 = evaluate_routes(untrained, test, progress=False)[-1].top1
    stitch = top1[f"{f.name}:7->{g.name}:7"]
    weaker = min(top1[f.name], top1[g.name])
    assert weaker > 70 and stitch >= weaker - 6, top1
    assert random_top1 < weaker - 20, random_top1


@pytest.mark.slow
def test_the_zoo_config_runs_end_to_end_on_a_small_budget(tmp_path, capsys):
    """`klas run configs/cifar10_zoo.yaml` as shipped, every budget shrunk (300 training, 100 held-out
    and 200 test images, a few steps): both protocols, KLAS against SN-Net's rules. SN-Net's three
    stage-to-stage stitches do not depend on the data; every stitch KLAS keeps joins a ResNet block to a GoogLeNet
    block of the same grid and costs between the two anchors."""
    import json
    from pathlib import Path

    from klas.anchors import load_anchor
    from klas.pipeline.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "cifar10_zoo.yaml"
    small = ["data.train_limit=300", "data.val_limit=100", "data.test_limit=200", "adapt.steps=2",
             "adapt.batch_size=16", "extract.batch_size=100", "probes.epochs=1", "finetune.steps=4",
             "finetune.batch_size=8", "finetune.checkpoint_every=4", "finetune.calibration_images=16",
             "evaluate.batch_size=200",
             "select.compare=[klas,snnet-nearest]", f"out={tmp_path / 'zoo'}"]
    assert main(["run", str(config), "--quiet", *[a for s in small for a in ("--set", s)]]) == 0
    capsys.readouterr()
    f, g = load_anchor("cifar-zoo:resnet"), load_anchor("cifar-zoo:googlenet")
    f_grid = [block.grid for block in f.block_info]  # block i's output feeds the target after its block j
    g_grid = [block.grid for block in g.block_info]
    for protocol in ("snnet", "stitches-only"):
        report = json.loads((tmp_path / "zoo" / "report" / protocol / "report.json").read_text())
        low, high = report["flops_range"]
        routes = {m: [r for r in rs if r["source"] != r["target"]] for m, rs in report["results"].items()}
        anchors = {r["name"]: r for r in report["results"]["klas"] if r["source"] == r["target"]}
        assert set(anchors) == {f.name, g.name} and all(r["total"] == 200 for r in anchors.values())
        assert min(r["top1"] for r in anchors.values()) > 65, anchors
        assert {(r["i"], r["j"]) for r in routes["snnet-nearest"]} == {(6, 5), (5, 4), (4, 3)}
        assert routes["klas"], "KLAS kept no stitch"
        for r in routes["klas"]:
            assert (r["source"], r["target"]) == (f.name, g.name)
            assert f_grid[r["i"] - 1] == g_grid[r["j"] - 1] and low <= r["flops"] <= high, r
            assert 0 <= r["top1"] <= 100 and r["total"] == 200
