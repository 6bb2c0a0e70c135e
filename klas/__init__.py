"""klas: choose where to stitch pretrained networks (KLAS), fast.

The public names below are imported on first use (klas._exports), so `import klas` and the `klas`
command's --help and --version start without loading torch.
"""
from klas._exports import lazy_exports
from klas.errors import AnchorError, CacheError, DataError, KlasError

__version__ = "0.1.0"

__getattr__, __dir__, _lazy = lazy_exports(__name__, {
    "load_anchor": "anchors",
    "wrap_model": "anchors.wrapped",
    "extract": "extraction.extract",
    "kl_matrix": "scoring.kl",
    "kl_matrix_from_features": "scoring.kl",
    "train_probes": "scoring.probes",
    "score": "scoring.scores",
    "stitch_scores": "scoring.scores",
    "AnchorFeatures": "pipeline.tensors",
    "scores_from_tensors": "pipeline.tensors",
    "select": "selection.select",
    "select_snnet_nearest": "selection.select",
    "to_snnet": "selection.export",
    "to_snnet_configs": "selection.snnet_bridge",
})

__all__ = sorted(["AnchorError", "CacheError", "DataError", "KlasError", "__version__", *_lazy])
