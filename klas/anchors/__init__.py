"""Anchors: pretrained models cut into stem, blocks and head, named by spec strings.

Each kind of spec registers itself where its loader is defined (`klas.anchors.registry.anchor_kind`);
importing this package imports every adapter module, so that `KINDS` lists them all (`klas anchors`).
"""
from klas.anchors.base import LAYOUTS, LOGITS, Anchor, AnchorFlops, BlockInfo, take_blocks
from klas.anchors.cifar_resnet import CifarResNet, load_cifar_resnet
from klas.anchors.cifar_zoo import ZOO, load_cifar_zoo
from klas.anchors.module import ModuleAnchor, load_module
from klas.anchors.registry import KINDS, anchor_kind, load_anchor, parse_spec, register_adapter
from klas.anchors.timm_models import TIMM_FAMILIES, load_timm
from klas.anchors.wrapped import WrappedAnchor, wrap_model

__all__ = [
    "KINDS", "LAYOUTS", "LOGITS", "TIMM_FAMILIES", "Anchor", "AnchorFlops", "BlockInfo", "CifarResNet",
    "ModuleAnchor", "ZOO", "anchor_kind", "load_cifar_zoo", "load_anchor", "load_cifar_resnet", "load_module", "load_timm", "parse_spec",
    "register_adapter", "take_blocks", "WrappedAnchor", "wrap_model",
]
