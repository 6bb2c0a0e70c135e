"""Anchors: pretrained models cut into stem, blocks and head, named by spec strings."""
from klas.anchors.base import LAYOUTS, Anchor, AnchorFlops, BlockInfo
from klas.anchors.cifar_resnet import CifarResNet, load_cifar_resnet
from klas.anchors.module import ModuleAnchor, load_module
from klas.anchors.registry import ADAPTERS, load_anchor, parse_spec, register_adapter
from klas.anchors.timm_models import load_timm

register_adapter("cifar-resnet", load_cifar_resnet, {"pretrained": bool, "num_classes": int})
register_adapter("timm", load_timm, {"pretrained": bool, "num_classes": int, "img_size": int, "patch_size": int,
                                     "depth": int, "window_size": int, "in_chans": int}, open_options=True)
register_adapter("module", load_module)

__all__ = [
    "ADAPTERS", "LAYOUTS", "Anchor", "AnchorFlops", "BlockInfo", "CifarResNet", "ModuleAnchor",
    "load_anchor", "parse_spec", "register_adapter",
]
