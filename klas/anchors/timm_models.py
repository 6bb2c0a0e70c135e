"""timm models as anchors: `timm:MODEL_NAME[?pretrained=false&img_size=64&num_classes=10]`.

One small adapter per model family says what the stem, the blocks and the head are, following
each family's own `forward_features` / `forward_head`:

- VisionTransformer (ViT, DeiT, DeiT distilled): stem = patch embed + position embed;
  blocks = `blocks`; head = `norm` + `forward_head`. Tokens, layout ``[B, L, C]``.
- SwinTransformer: stem = `patch_embed`; blocks = every stage's blocks in order, a stage's
  downsampling folded into its first block; head = `norm` + `forward_head`. Layout ``[B, H, W, C]``.
- ResNet: stem = conv1/bn1/act1/maxpool; blocks = `layer1..4` in order; head = `forward_head`.
- LeViT: stem = `stem` + flatten to tokens; blocks = every stage's blocks, downsampling folded
  into the first block of the stage; head = `forward_head`. Tokens.
"""
from __future__ import annotations

from torch import nn

from klas.anchors.base import Anchor
from klas.errors import AnchorError

__all__ = ["load_timm"]


def _stage_blocks(stages, prefix: str) -> tuple[list[nn.Module], list[str]]:
    """Flattens stages of `downsample` + `blocks` into one block list; a non-trivial downsample
    runs as part of its stage's first block."""
    blocks, names = [], []
    for s, stage in enumerate(stages):
        down = getattr(stage, "downsample", None)
        for k, block in enumerate(stage.blocks):
            if k == 0 and down is not None and not isinstance(down, nn.Identity):
                block = nn.Sequential(down, block)
            blocks.append(block)
            names.append(f"{prefix}.{s}.blocks.{k}")
    return blocks, names


class VitAnchor(Anchor):
    layout = "nlc"

    @staticmethod
    def parts(model):
        return list(model.blocks), [f"blocks.{k}" for k in range(len(model.blocks))]

    def run_stem(self, x):
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def run_head(self, h):
        return self.model.forward_head(self.model.norm(h))


class SwinAnchor(Anchor):
    layout = "nhwc"

    @staticmethod
    def parts(model):
        return _stage_blocks(model.layers, "layers")

    def run_stem(self, x):
        return self.model.patch_embed(x)

    def run_head(self, h):
        return self.model.forward_head(self.model.norm(h))


class ResNetAnchor(Anchor):
    layout = "nchw"

    @staticmethod
    def parts(model):
        blocks, names = [], []
        for s in (1, 2, 3, 4):
            for k, block in enumerate(getattr(model, f"layer{s}")):
                blocks.append(block)
                names.append(f"layer{s}.{k}")
        return blocks, names

    def run_stem(self, x):
        m = self.model
        return m.maxpool(m.act1(m.bn1(m.conv1(x))))

    def run_head(self, h):
        return self.model.forward_head(h)


class LevitAnchor(Anchor):
    layout = "nlc"

    @staticmethod
    def parts(model):
        if model.use_conv:
            raise AnchorError("LeViT with use_conv=True is not supported; use the token (default) variant")
        return _stage_blocks(model.stages, "stages")

    def run_stem(self, x):
        return self.model.stem(x).flatten(2).transpose(1, 2)

    def run_head(self, h):
        return self.model.forward_head(h)


def _adapter_for(model) -> type[Anchor]:
    from timm.models.levit import Levit
    from timm.models.resnet import ResNet
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    for cls, adapter in ((VisionTransformer, VitAnchor), (SwinTransformer, SwinAnchor),
                         (ResNet, ResNetAnchor), (Levit, LevitAnchor)):
        if isinstance(model, cls):
            return adapter
    raise AnchorError(
        f"timm model class {type(model).__name__} has no klas adapter yet (supported: ViT/DeiT, "
        "Swin, ResNet, LeViT); wrap it with a module: spec instead"
    )


def load_timm(spec: str, args: list[str], options: dict) -> Anchor:
    """Builds a timm model by name (options go to timm.create_model; pretrained defaults to True)."""
    import timm
    from timm.data import resolve_data_config

    if len(args) != 1 or not args[0]:
        raise AnchorError(f"anchor spec {spec!r}: expected timm:MODEL_NAME, e.g. timm:deit_tiny_patch16_224")
    name = args[0]
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise AnchorError(f"unknown timm model {name!r}" + (f"; similar names: {', '.join(close)}" if close else ""))
    kwargs = dict(options)
    kwargs.setdefault("pretrained", True)
    try:
        model = timm.create_model(name, **kwargs)
    except Exception as e:  # timm raises many types (network, hub, bad kwargs)
        raise AnchorError(f"timm could not build {name!r} with {kwargs} ({type(e).__name__}: {e})") from None
    adapter = _adapter_for(model)
    blocks, names = adapter.parts(model)
    cfg = resolve_data_config({}, model=model)
    if "img_size" in options:  # the pretrained config still names the default resolution
        size = options["img_size"]
        cfg["input_size"] = (cfg["input_size"][0], *((size, size) if isinstance(size, int) else size))
    return adapter(
        spec=spec, name=name, model=model.eval(), blocks=blocks, block_names=names,
        layouts=adapter.layout, input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]), num_classes=model.num_classes,
    )
