"""Stitching: the supernet of a selection, its finetuning, and anchor adaptation."""
from klas._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "StitchedSupernet": "stitch",
    "FinetuneSettings": "settings",
    "FinetuneSection": "settings",
    "AdaptSection": "settings",
    "route_schedule": "finetune",
    "adapt_anchor": "adapt",
    "apply_adapted": "adapt",
})
