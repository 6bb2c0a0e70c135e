"""The shared CIFAR-10 zoo as anchors: `cifar-zoo:NAME[:CHECKPOINT][?seed=K]`.

Seven architectures from three public projects ($KLAS_SHARED/models/cifar10-zoo, its README):

| NAME | file | blocks (where a stitch can sit) |
|---|---|---|
| resnet | resnet.ckpt | the 9 residual blocks |
| resnet-preact | resnet_preact.ckpt | the 9 pre-activation blocks |
| googlenet | googlenet.ckpt | the 8 inception blocks, each max-pool folded into the next block |
| densenet | densenet.ckpt | the 24 dense layers, each transition folded into the next layer |
| convmixer | convmixer256_8.pth | the 8 mixer blocks |
| tiny10 | tiny10_seed{K}.pt | the 8 conv-BN-ReLU layers |
| resnet20w1 | resnet20w1_seed{K}.pt | the 9 basic blocks |

The modules below are written here with the upstream state-dict layouts (module names and
`nn.Sequential` indices), so the checkpoints load strictly. Each model normalises its input inside
its stem with its own constants: the anchors declare mean 0 and std 1, so one batch of [0, 1]
images feeds every zoo anchor and every stitched route between them.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from klas.anchors.base import Anchor, load_state_checked
from klas.anchors.registry import anchor_kind
from klas.errors import AnchorError

__all__ = ["ZOO", "load_cifar_zoo"]

TUTORIAL5 = ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784))
KUANGLIU = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # ConvMixer's and drfrankenstein's constants


def _conv_bn_act(c_in: int, c_out: int, k: int, **conv) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, **conv), nn.BatchNorm2d(c_out), nn.ReLU()]


# ---- tutorial5 (phlippe/uvadlc_notebooks): ResNet, pre-activation ResNet, GoogleNet, DenseNet ----

class _ResBlock(nn.Module):
    """Post-activation residual block; a stride-2 block has a 1x1 conv (with bias) shortcut."""

    def __init__(self, c_in: int, c_out: int, subsample: bool):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2 if subsample else 1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(c_out))
        self.downsample = nn.Conv2d(c_in, c_out, 1, stride=2) if subsample else None

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(self.net(x) + skip)


class _PreActBlock(nn.Module):
    """Pre-activation residual block (BN-ReLU-conv twice); no activation after the sum."""

    def __init__(self, c_in: int, c_out: int, subsample: bool):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(),
                                 nn.Conv2d(c_in, c_out, 3, padding=1, stride=2 if subsample else 1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False))
        self.downsample = (nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 1, stride=2, bias=False))
                           if subsample else None)

    def forward(self, x):
        return self.net(x) + (x if self.downsample is None else self.downsample(x))


class Tutorial5ResNet(nn.Module):
    def __init__(self, preact: bool, widths=(16, 32, 64), blocks_per_stage=(3, 3, 3), num_classes: int = 10):
        super().__init__()
        first = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False)]
        self.input_net = nn.Sequential(*(first if preact else first + [nn.BatchNorm2d(widths[0]), nn.ReLU()]))
        block, blocks = (_PreActBlock if preact else _ResBlock), []
        for s, count in enumerate(blocks_per_stage):
            for k in range(count):
                subsample = k == 0 and s > 0
                blocks.append(block(widths[s - 1] if subsample else widths[s], widths[s], subsample))
        self.blocks = nn.Sequential(*blocks)
        self.output_net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))

    def forward(self, x):
        return self.output_net(self.blocks(self.input_net(x)))


class _Inception(nn.Module):
    def __init__(self, c_in: int, red3: int, red5: int, out1: int, out3: int, out5: int, out_max: int):
        super().__init__()
        self.conv_1x1 = nn.Sequential(*_conv_bn_act(c_in, out1, 1))
        self.conv_3x3 = nn.Sequential(*_conv_bn_act(c_in, red3, 1), *_conv_bn_act(red3, out3, 3, padding=1))
        self.conv_5x5 = nn.Sequential(*_conv_bn_act(c_in, red5, 1), *_conv_bn_act(red5, out5, 5, padding=2))
        self.max_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_act(c_in, out_max, 1))

    def forward(self, x):
        return torch.cat([self.conv_1x1(x), self.conv_3x3(x), self.conv_5x5(x), self.max_pool(x)], dim=1)


# (c_in, 3x3 reduce, 5x5 reduce, 1x1, 3x3, 5x5, pool proj) of the eight inception blocks; "pool" between stages
_GOOGLENET = [(64, 32, 16, 16, 32, 8, 8), (64, 32, 16, 24, 48, 12, 12), "pool",
              (96, 32, 16, 24, 48, 12, 12), (96, 32, 16, 16, 48, 16, 16), (96, 32, 16, 16, 48, 16, 16),
              (96, 32, 16, 32, 48, 24, 24), "pool", (128, 48, 16, 32, 64, 16, 16), (128, 48, 16, 32, 64, 16, 16)]


class Tutorial5GoogleNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.input_net = nn.Sequential(*_conv_bn_act(3, 64, 3, padding=1))
        self.inception_blocks = nn.Sequential(*[nn.MaxPool2d(3, stride=2, padding=1) if b == "pool" else _Inception(*b)
                                                for b in _GOOGLENET])
        self.output_net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.output_net(self.inception_blocks(self.input_net(x)))


class _DenseLayer(nn.Module):
    def __init__(self, c_in: int, bn_size: int, growth: int):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, bn_size * growth, 1, bias=False),
                                 nn.BatchNorm2d(bn_size * growth), nn.ReLU(),
                                 nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([self.net(x), x], dim=1)


class _DenseBlock(nn.Module):
    def __init__(self, c_in: int, layers: int, bn_size: int, growth: int):
        super().__init__()
        self.block = nn.Sequential(*[_DenseLayer(c_in + k * growth, bn_size, growth) for k in range(layers)])

    def forward(self, x):
        return self.block(x)


class _Transition(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.transition = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False),
                                        nn.AvgPool2d(2, stride=2))

    def forward(self, x):
        return self.transition(x)


class Tutorial5DenseNet(nn.Module):
    def __init__(self, layers=(6, 6, 6, 6), bn_size: int = 2, growth: int = 16, num_classes: int = 10):
        super().__init__()
        c = bn_size * growth
        self.input_net = nn.Sequential(nn.Conv2d(3, c, 3, padding=1))
        parts = []
        for s, count in enumerate(layers):
            parts.append(_DenseBlock(c, count, bn_size, growth))
            c += count * growth
            if s < len(layers) - 1:
                parts.append(_Transition(c, c // 2))
                c //= 2
        self.blocks = nn.Sequential(*parts)
        self.output_net = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                        nn.Linear(c, num_classes))

    def forward(self, x):
        return self.output_net(self.blocks(self.input_net(x)))


# ---- ConvMixer-256/8 (kentaroy47/vision-transformers-cifar10) ----

class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def convmixer(dim: int = 256, depth: int = 8, kernel: int = 9, patch: int = 4, num_classes: int = 10) -> nn.Sequential:
    """Indices as upstream: 0-2 patch stem, 3.. the mixer blocks, then pool, flatten, linear."""
    def mixer():
        return nn.Sequential(_Residual(nn.Sequential(nn.Conv2d(dim, dim, kernel, groups=dim, padding="same"), nn.GELU(),
                                                     nn.BatchNorm2d(dim))),
                             nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))
    return nn.Sequential(nn.Conv2d(3, dim, patch, stride=patch), nn.GELU(), nn.BatchNorm2d(dim),
                         *[mixer() for _ in range(depth)], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(dim, num_classes))


# ---- Tiny10 and ResNet-20 w1 (renyi-ai/drfrankenstein) ----

class Tiny10(nn.Module):
    """Eight conv-BN-ReLU layers without padding (strides 2 at layers 3 and 6), global mean, fc."""

    LAYERS = [(3, 16, 3, 1), (16, 16, 3, 1), (16, 32, 3, 2), (32, 32, 3, 1), (32, 32, 3, 1), (32, 64, 3, 2),
              (64, 64, 3, 1), (64, 64, 1, 1)]

    def __init__(self, num_classes: int = 10):
        super().__init__()
        for k, (c_in, c_out, size, stride) in enumerate(self.LAYERS, start=1):
            setattr(self, f"conv{k}", nn.Conv2d(c_in, c_out, size, stride))
            setattr(self, f"bn{k}", nn.BatchNorm2d(c_out))
        self.fc = nn.Linear(64, num_classes)

    def layer(self, k: int) -> nn.Sequential:
        """conv_k, bn_k and ReLU as one module (the model's own conv and BN, not copies)."""
        return nn.Sequential(getattr(self, f"conv{k}"), getattr(self, f"bn{k}"), nn.ReLU())

    def forward(self, x):
        for k in range(1, len(self.LAYERS) + 1):
            x = F.relu(getattr(self, f"bn{k}")(getattr(self, f"conv{k}")(x)))
        return self.fc(x.mean(dim=(2, 3)))


class _BasicBlock(nn.Module):
    """torchvision-style basic block; a 1x1 conv + BN projection where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + skip)


class ResNet20w(nn.Module):
    def __init__(self, width: int = 1, num_classes: int = 10):
        super().__init__()
        c = 16 * width
        self.conv1 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        for s, planes in enumerate((16 * width, 32 * width, 64 * width), start=1):
            blocks = [_BasicBlock(c, planes, 1 if s == 1 else 2)] + [_BasicBlock(planes, planes, 1) for _ in range(2)]
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
            c = planes
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layer3(self.layer2(self.layer1(x))).mean(dim=(2, 3)))


# ---- the anchors ----

class ZooAnchor(Anchor):
    """A zoo model: stem = input normalisation + `stem`, then the blocks, then `head`. Each zoo
    project normalised with its own constants; the anchor normalises in its stem (takes [0, 1])."""

    def __init__(self, model: nn.Module, *, spec: str, name: str, stem: nn.Module, blocks, block_names, head,
                 norm: tuple[tuple[float, ...], tuple[float, ...]]):
        super().__init__(spec=spec, name=name, model=model, blocks=blocks, block_names=block_names, layouts="nchw",
                         input_size=(3, 32, 32), mean=norm[0], std=norm[1], num_classes=10)
        self._stem, self._head = [stem], [head]  # plain lists: the modules belong to `model`
        self.normalise_in_stem()

    def run_stem(self, x):
        return self._stem[0](x)

    def run_head(self, h):
        return self._head[0](h)


def _fold(modules, is_block) -> tuple[list[nn.Module], list[str]]:
    """Blocks from (name, module) pairs: modules that are not blocks (pools, transitions) run as
    part of the next block."""
    blocks, names, pending = [], [], []
    for name, m in modules:
        if not is_block(m):
            pending.append(m)
            continue
        blocks.append(nn.Sequential(*pending, m) if pending else m)
        names.append(name)
        pending = []
    if pending:
        raise AnchorError("a pooling or transition layer after the last block has no block to join")
    return blocks, names


def _tutorial5(model, name: str, spec: str, preact: bool = False):
    if isinstance(model, Tutorial5DenseNet):
        items = []
        for k, part in enumerate(model.blocks):
            if isinstance(part, _DenseBlock):
                items += [(f"blocks.{k}.block.{j}", layer) for j, layer in enumerate(part.block)]
            else:
                items.append((f"blocks.{k}", part))
        blocks, names = _fold(items, lambda m: isinstance(m, _DenseLayer))
    elif isinstance(model, Tutorial5GoogleNet):
        blocks, names = _fold([(f"inception_blocks.{k}", m) for k, m in enumerate(model.inception_blocks)],
                              lambda m: isinstance(m, _Inception))
    else:
        blocks, names = list(model.blocks), [f"blocks.{k}" for k in range(len(model.blocks))]
    return ZooAnchor(model, spec=spec, name=name, stem=model.input_net, blocks=blocks, block_names=names,
                     head=model.output_net, norm=TUTORIAL5)


def _convmixer(model: nn.Sequential, name: str, spec: str):
    parts = list(model)
    return ZooAnchor(model, spec=spec, name=name, stem=nn.Sequential(*parts[:3]), blocks=parts[3:-3],
                     block_names=[str(k) for k in range(3, len(parts) - 3)], head=nn.Sequential(*parts[-3:]),
                     norm=KUANGLIU)


def _tiny10(model: Tiny10, name: str, spec: str):
    return ZooAnchor(model, spec=spec, name=name, stem=nn.Identity(), blocks=[model.layer(k) for k in range(1, 9)],
                     block_names=[f"conv{k}" for k in range(1, 9)], head=_MeanFc(model.fc), norm=KUANGLIU)


class _MeanFc(nn.Module):
    """Global mean over the grid, then the model's own fc."""

    def __init__(self, fc: nn.Linear):
        super().__init__()
        self.fc = fc

    def forward(self, h):
        return self.fc(h.mean(dim=(2, 3)))


def _resnet20w(model: ResNet20w, name: str, spec: str):
    blocks = [b for s in (1, 2, 3) for b in getattr(model, f"layer{s}")]
    names = [f"layer{s}.{k}" for s in (1, 2, 3) for k in range(3)]
    stem = nn.Sequential(model.conv1, model.bn1, model.relu)
    return ZooAnchor(model, spec=spec, name=name, stem=stem, blocks=blocks, block_names=names,
                     head=_MeanFc(model.fc), norm=KUANGLIU)


# name -> (file, seeded?, build the module, its anchor, checkpoint layout: "lightning" / "plain")
ZOO = {
    "resnet": ("resnet.ckpt", False, lambda: Tutorial5ResNet(preact=False), _tutorial5, "lightning"),
    "resnet-preact": ("resnet_preact.ckpt", False, lambda: Tutorial5ResNet(preact=True), _tutorial5, "lightning"),
    "googlenet": ("googlenet.ckpt", False, Tutorial5GoogleNet, _tutorial5, "lightning"),
    "densenet": ("densenet.ckpt", False, Tutorial5DenseNet, _tutorial5, "lightning"),
    "convmixer": ("convmixer256_8.pth", False, convmixer, _convmixer, "plain"),
    "tiny10": ("tiny10_seed{seed}.pt", True, Tiny10, _tiny10, "plain"),
    "resnet20w1": ("resnet20w1_seed{seed}.pt", True, ResNet20w, _resnet20w, "plain"),
}


def _zoo_dir() -> Path:
    from klas.settings import shared_dir

    return shared_dir() / "models" / "cifar10-zoo"


def _load_weights(model: nn.Module, path: Path, layout: str) -> None:
    from klas.reading import load_checkpoint

    data = load_checkpoint(path, what="checkpoint", error=AnchorError, fix="give the zoo's checkpoint file")
    if layout == "lightning":
        state = data.get("state_dict") if isinstance(data, dict) else None
        if not isinstance(state, dict):
            raise AnchorError(f"{path} holds no Lightning state_dict")
        state = {k.removeprefix("model."): v for k, v in state.items() if isinstance(k, str) and k.startswith("model.")}
    else:
        state = ({k.removeprefix("module.") if isinstance(k, str) else k: v for k, v in data.items()}
                 if isinstance(data, dict) else None)
    if not isinstance(state, dict):
        raise AnchorError(f"{path} holds no state dict")
    load_state_checked(model, state, path, hint="Check that the spec names the zoo model this checkpoint is of")


@anchor_kind("cifar-zoo", options={"pretrained": bool, "seed": int}, usage="cifar-zoo:NAME[:CHECKPOINT]",
             help="a model of the shared CIFAR-10 zoo (" + ", ".join(ZOO) + "); seed=K picks the seed of "
                  "tiny10 / resnet20w1",
             test_specs=tuple(f"cifar-zoo:{n}?pretrained=false" for n in ZOO))
def load_cifar_zoo(spec: str, args: list[str], options: dict) -> Anchor:
    """`cifar-zoo:NAME[:PATH]`; without PATH the shared zoo's file (for tiny10 / resnet20w1 the one of
    `seed`, default 0). `pretrained=false` builds random weights."""
    if not args or args[0] not in ZOO:
        raise AnchorError(f"anchor spec {spec!r}: expected cifar-zoo:NAME with NAME one of {', '.join(ZOO)}")
    name = args[0]
    file, seeded, build, anchor_of, layout = ZOO[name]
    seed = options.get("seed", 0)
    if "seed" in options and not seeded and options.get("pretrained", True):
        raise AnchorError(f"anchor spec {spec!r}: the zoo has one {name} checkpoint; seed=K picks the checkpoint of "
                          "tiny10 and resnet20w1 only (or seeds random weights with pretrained=false)")
    model = build()
    if options.get("pretrained", True):
        path = Path(":".join(args[1:])).expanduser() if len(args) > 1 else _zoo_dir() / file.format(seed=seed)
        if len(args) == 1 and not path.exists():
            raise AnchorError(f"{path} does not exist: the zoo is looked for under $KLAS_SHARED (now "
                              f"{_zoo_dir().parent.parent}); set KLAS_SHARED, or give a checkpoint path "
                              f"(cifar-zoo:{name}:PATH)")
        _load_weights(model, path, layout)
    label = f"{name}-seed{seed}" if seeded else name
    return anchor_of(model.eval(), f"cifar-zoo-{label}", spec)
