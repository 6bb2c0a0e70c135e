"""klas: choose where to stitch pretrained networks (KLAS), fast."""
from klas.anchors import load_anchor
from klas.errors import AnchorError, CacheError, DataError, KlasError
from klas.extraction.extract import extract
from klas.scoring.kl import kl_matrix, kl_matrix_from_features
from klas.scoring.probes import train_probes
from klas.scoring.scores import score, stitch_scores

__version__ = "0.1.0"

__all__ = [
    "AnchorError", "CacheError", "DataError", "KlasError", "__version__", "extract", "kl_matrix",
    "kl_matrix_from_features", "load_anchor", "score", "stitch_scores", "train_probes",
]
