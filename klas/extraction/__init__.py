"""Extraction: images in, every block's pooled output of every anchor into activation caches."""
from klas._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ImageDataset": "data",
    "split_for_anchor": "data",
    "make_loader": "data",
    "resolve_split": "data",
    "cached_anchors": "extract",
    "cache_layout": "extract",
})
