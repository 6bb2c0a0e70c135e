"""timm models as anchors: `timm:MODEL_NAME[?pretrained=false&img_size=64&num_classes=10]`.

One small adapter per model family says what the stem, the blocks and the head are, following
each family's own `forward_features` / `forward_head`. Each registers itself (`timm_family`) with
the timm model class it adapts and the timm modules that define that family's models:

- VisionTransformer (ViT, DeiT, DeiT distilled): stem = patch embed + position embed;
  blocks = `blocks`; head = `norm` + `forward_head`. Tokens, layout ``[B, L, C]``; the class (and
  distillation, register) tokens come first (`num_prefix_tokens`), then the patch tokens row-major.
- SwinTransformer: stem = `patch_embed`; blocks = every stage's blocks in order, a stage's
  downsampling folded into its first block; head = `norm` + `forward_head`. Layout ``[B, H, W, C]``.
- ResNet: stem = conv1/bn1/act1/maxpool; blocks = `layer1..4` in order; head = `forward_head`.
- LeViT: stem = `stem` + flatten to tokens; blocks = every stage's blocks, downsampling folded
  into the first block of the stage; head = `forward_head`. Tokens.

timm has no public call for a ViT's stem alone (`forward_intermediates` starts at the images and
returns block outputs), so the ViT stem calls the same parts as `forward_features` does, `_pos_embed`
among them; the tests hold every adapter's cut-and-rejoin to the model's own forward.

Every other timm model with `feature_info` (ConvNeXt, EfficientNet, MobileNetV3, RegNet, DenseNet,
GhostNet, EdgeNeXt, ...) is cut generically: its forward traced with torch.fx (timm's own
no-trace modules and functions kept whole) after each block of the stages `feature_info` names
(`feature_blocks`), or after each stage where a finer cut is refused (klas.anchors.wrapped).

`img_size` sets the input size; convolutional families take any size and are not passed it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn

from klas.anchors.base import Anchor
from klas.anchors.registry import anchor_kind
from klas.errors import AnchorError

__all__ = ["load_timm", "timm_family", "TimmFamily", "TIMM_FAMILIES", "feature_blocks", "close_timm_names"]


@dataclass(frozen=True)
class TimmFamily:
    """A timm model family klas can cut: its adapter, the timm class it adapts (a subclass also
    fits), the timm modules whose models belong to it, and whether `img_size` is for the input only."""
    name: str
    model_class: str  # "timm.models.resnet.ResNet"
    modules: tuple[str, ...]  # "timm.models.resnet", ...
    adapter: type
    input_size_only: bool = False
    test_spec: str = ""  # a model of the family built with random weights at a small size (contract tests)

    def adapts(self, model) -> bool:
        module, _, cls = self.model_class.rpartition(".")
        return isinstance(model, getattr(importlib.import_module(module), cls))


TIMM_FAMILIES: dict[str, TimmFamily] = {}


def timm_family(name: str, model_class: str, modules: tuple[str, ...], *, input_size_only: bool = False,
                test_spec: str = ""):
    """Class decorator: registers an Anchor subclass as the adapter of a timm family."""
    def wrap(adapter):
        TIMM_FAMILIES[name] = TimmFamily(name, model_class, tuple(modules), adapter, input_size_only, test_spec)
        return adapter
    return wrap


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


@timm_family("vit", "timm.models.vision_transformer.VisionTransformer",
             ("timm.models.vision_transformer", "timm.models.deit"),
             test_spec="timm:deit_tiny_patch16_224?pretrained=false&img_size=32&patch_size=8")
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


@timm_family("swin", "timm.models.swin_transformer.SwinTransformer", ("timm.models.swin_transformer",),
             test_spec="timm:swin_tiny_patch4_window7_224?pretrained=false&img_size=64&window_size=4")
class SwinAnchor(Anchor):
    layout = "nhwc"

    @staticmethod
    def parts(model):
        return _stage_blocks(model.layers, "layers")

    def run_stem(self, x):
        return self.model.patch_embed(x)

    def run_head(self, h):
        return self.model.forward_head(self.model.norm(h))


@timm_family("resnet", "timm.models.resnet.ResNet", ("timm.models.resnet",), input_size_only=True,
             test_spec="timm:resnet18?pretrained=false&img_size=64")
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


@timm_family("levit", "timm.models.levit.Levit", ("timm.models.levit",),
             test_spec="timm:levit_128s?pretrained=false&img_size=64")
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


def _supported() -> str:
    return ", ".join(f"{f.name} ({f.model_class.rsplit('.', 1)[-1]})" for f in TIMM_FAMILIES.values())


def _family_by_module(name: str) -> TimmFamily | None:
    """The family whose timm module defines model `name` (known before the model is built)."""
    from timm.models import model_entrypoint

    module = model_entrypoint(name).__module__
    return next((f for f in TIMM_FAMILIES.values() if module in f.modules), None)


def _family_of(model) -> TimmFamily | None:
    """The family adapter of `model`, None for a model every family leaves to the generic cut."""
    return next((f for f in TIMM_FAMILIES.values() if f.adapts(model)), None)


def _feature_stages(model) -> list[str]:
    """The stage modules a timm model's `feature_info` names (empty when it has none)."""
    info = getattr(model, "feature_info", None)
    return [f["module"] for f in info] if isinstance(info, list) and all("module" in f for f in info) else []


def close_timm_names(name: str) -> list[str]:
    """timm's model names nearest to `name` (a typo's likely meaning), at most five."""
    import difflib

    import timm

    return difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)


def feature_blocks(model) -> list[str]:
    """The blocks of a timm model without a family adapter, from its `feature_info` (the stage
    modules timm's own feature extraction taps): each stage split into its blocks where it holds a
    sequence of them (`stage.blocks`, or the stage itself a Sequential), else the stage whole."""
    stages = _feature_stages(model)
    if not stages:
        raise AnchorError(f"timm model class {type(model).__name__} has no feature_info to find its blocks by "
                          f"(families with their own adapter: {_supported()}); wrap it with klas.wrap_model")
    named = dict(model.named_modules())
    names = []
    for stage in stages:
        module = named.get(stage)
        inner = getattr(module, "blocks", None)
        if isinstance(inner, nn.Sequential) and len(inner) > 0:
            names += [f"{stage}.blocks.{k}" for k in range(len(inner))]
        elif isinstance(module, nn.Sequential) and len(module) > 1:
            names += [f"{stage}.{k}" for k in range(len(module))]
        else:
            names.append(stage)
    return names


def _generic(spec: str, name: str, model, cfg: dict) -> Anchor:
    """A timm model of no adapted family, cut by tracing its forward (klas.anchors.wrapped) after
    each block of `feature_blocks`; at the stage level where a finer cut is refused."""
    from timm.layers import get_notrace_functions, get_notrace_modules

    from klas.anchors.wrapped import wrap_model

    stages = _feature_stages(model)
    common = dict(input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                  num_classes=model.num_classes, name=name, spec=spec, leaf_types=tuple(get_notrace_modules()),
                  autowrap_functions=tuple(get_notrace_functions()))
    blocks = feature_blocks(model)
    try:
        return wrap_model(model.eval(), blocks, **common)
    except AnchorError:
        if blocks == stages:
            raise
    return wrap_model(model.eval(), stages, **common)


@anchor_kind("timm", options={"pretrained": bool, "num_classes": int, "img_size": int, "patch_size": int,
                               "depth": int, "window_size": int, "in_chans": int}, open_options=True,
             usage="timm:MODEL_NAME",
             help="a timm model by name; options go to timm.create_model (pretrained defaults to true)",
             test_specs=(*(f.test_spec for f in TIMM_FAMILIES.values()),
                         "timm:deit_tiny_distilled_patch16_224?pretrained=false&img_size=32&patch_size=8",
                         "timm:vit_small_patch16_224?pretrained=false&img_size=32&patch_size=16&depth=4",
                         "timm:resnet18?pretrained=false&num_classes=10"))
def load_timm(spec: str, args: list[str], options: dict) -> Anchor:
    """Builds a timm model by name (options go to timm.create_model; pretrained defaults to True)."""
    import timm
    from timm.data import resolve_data_config

    if len(args) != 1 or not args[0]:
        raise AnchorError(f"anchor spec {spec!r}: expected timm:MODEL_NAME, e.g. timm:deit_tiny_patch16_224")
    name = args[0]
    if not timm.is_model(name):
        close = close_timm_names(name)
        raise AnchorError(f"unknown timm model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                           "; `timm.list_models('*PATTERN*')` lists the names"))
    kwargs = dict(options)
    kwargs.setdefault("pretrained", True)
    expected = _family_by_module(name)
    if expected is not None and expected.input_size_only:
        kwargs.pop("img_size", None)
    try:
        try:
            model = timm.create_model(name, **kwargs)
        except TypeError as e:  # a family without an adapter that takes no img_size: it sets the input only
            if expected is not None or "img_size" not in kwargs or "img_size" not in str(e):
                raise
            model = timm.create_model(name, **{k: v for k, v in kwargs.items() if k != "img_size"})
    except Exception as e:  # timm raises many types (network, hub, bad kwargs)
        raise AnchorError(f"timm could not build {name!r} with {kwargs} ({type(e).__name__}: {e})") from None
    cfg = resolve_data_config({}, model=model)
    if "img_size" in options:  # the pretrained config still names the default resolution
        size = options["img_size"]
        cfg["input_size"] = (cfg["input_size"][0], *((size, size) if isinstance(size, int) else size))
    family = _family_of(model)
    if family is None:
        return _generic(spec, name, model, cfg)
    adapter = family.adapter
    blocks, names = adapter.parts(model)
    return adapter(
        spec=spec, name=name, model=model.eval(), blocks=blocks, block_names=names,
        layouts=adapter.layout, input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]), num_classes=model.num_classes,
        prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)) if adapter.layout == "nlc" else 0,
    )
