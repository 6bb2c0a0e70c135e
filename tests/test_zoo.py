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
