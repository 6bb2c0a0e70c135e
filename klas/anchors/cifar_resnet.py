"""CIFAR-10 ResNets (He et al. 2016, §4.2) as anchors: `cifar-resnet:DEPTH[:CHECKPOINT]`.

Architecture of the shared pretrained family: 3x3 conv stem (16 channels) + BN + ReLU, three
stages of n basic blocks (widths 16, 32, 64; stride 2 at the first block of stages 2 and 3),
global average pooling, Linear(64, 10); depth = 6n + 2. Shortcuts that change shape are "option A":
subsample by 2 and zero-pad the channels (no parameters). Checkpoints are `torch.save`d dicts with
a `state_dict` whose keys carry a `module.` prefix; they load with `weights_only=True`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from klas.anchors.base import Anchor, load_state_checked
from klas.anchors.registry import anchor_kind
from klas.errors import AnchorError

__all__ = ["CifarResNet", "CifarResNetAnchor", "load_cifar_resnet"]

CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = (planes - in_planes) // 2 if (stride != 1 or in_planes != planes) else None
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is None:
            return x
        # option A: subsample, zero-pad channels on both sides
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


MAX_DEPTH = 1202  # the deepest CIFAR ResNet of He et al. (2016)


class CifarResNet(nn.Module):
    """ResNet-`depth` for 32x32 inputs; parameter names match the shared checkpoints."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 != 0 or not 8 <= depth <= MAX_DEPTH or not 1 <= num_classes <= 100_000:
            raise AnchorError(f"CIFAR ResNet depth must be 6n + 2 from 8 to {MAX_DEPTH} (8, 14, 20, 32, 44, 56, 110, "
                              f"…, 1202) and num_classes in 1..100000, got depth {depth}, {num_classes} classes")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes_in = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for k in range(n):
                stride = 2 if (k == 0 and stage > 1) else 1
                blocks.append(BasicBlock(planes_in, planes, stride))
                planes_in = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(2, 3)))


class CifarResNetAnchor(Anchor):
    def __init__(self, model: CifarResNet, *, spec: str, name: str):
        blocks, names = [], []
        for stage in (1, 2, 3):
            for k, block in enumerate(getattr(model, f"layer{stage}")):
                blocks.append(block)
                names.append(f"layer{stage}.{k}")
        super().__init__(
            spec=spec, name=name, model=model, blocks=blocks, block_names=names, layouts="nchw",
            input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD,
            num_classes=model.linear.out_features,
        )

    def run_stem(self, x):
        return F.relu(self.model.bn1(self.model.conv1(x)))

    def run_head(self, h):
        return self.model.linear(h.mean(dim=(2, 3)))


# CIFAR-10's classes in label order (the order of the sorted class folder names)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_checkpoint_into(model: nn.Module, path: Path) -> None:
    """Loads a `torch.save`d state dict (optionally under "state_dict", "module." prefixes)
    with weights_only=True; AnchorError naming missing and unexpected keys."""
    from klas.reading import load_checkpoint

    data = load_checkpoint(path, what="checkpoint", error=AnchorError,
                           fix="give a checkpoint that holds a state dict of tensors")
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise AnchorError(f"checkpoint {path} holds no state dict")
    state = {k.removeprefix("module.") if isinstance(k, str) else k: v for k, v in state.items()}
    load_state_checked(model, state, path, hint="Check that the spec names the right architecture (e.g. the depth).")


@anchor_kind("cifar-resnet", options={"pretrained": bool, "num_classes": int},
             usage="cifar-resnet:DEPTH[:CHECKPOINT]",
             help="CIFAR ResNet-6n+2 (option-A shortcuts); without CHECKPOINT the shared resnetDEPTH.th",
             test_specs=("cifar-resnet:20?pretrained=false", "cifar-resnet:32?pretrained=false"))
def load_cifar_resnet(spec: str, args: list[str], options: dict) -> CifarResNetAnchor:
    """`cifar-resnet:DEPTH[:PATH]`; without PATH the shared folder's resnetDEPTH.th is used.
    Option `pretrained=false` builds random weights."""
    from klas.settings import cifar_resnet_dir

    if not args or not args[0].isdigit():
        raise AnchorError(f"anchor spec {spec!r}: expected cifar-resnet:DEPTH[:CHECKPOINT], e.g. cifar-resnet:20")
    depth = int(args[0])
    model = CifarResNet(depth, num_classes=options.get("num_classes", 10))
    if options.get("pretrained", True):
        path = Path(":".join(args[1:])) if len(args) > 1 else cifar_resnet_dir() / f"resnet{depth}.th"
        if len(args) == 1 and not path.exists():
            raise AnchorError(f"{path} does not exist: the shared CIFAR ResNets are looked for under $KLAS_SHARED "
                              f"(now {cifar_resnet_dir().parent.parent}); set KLAS_SHARED to the shared folder, or give "
                              f"a checkpoint path (cifar-resnet:{depth}:PATH)")
        load_checkpoint_into(model, path.expanduser())
    anchor = CifarResNetAnchor(model.eval(), spec=spec, name=f"cifar-resnet{depth}")
    if options.get("pretrained", True) and len(args) == 1 and anchor.num_classes == len(CIFAR10_CLASSES):
        anchor.class_names = CIFAR10_CLASSES  # the shared checkpoints were trained on CIFAR-10, in this order
    return anchor
