"""klas: choose where to stitch pretrained networks (KLAS), fast."""
from klas.errors import AnchorError, CacheError, DataError, KlasError

__version__ = "0.1.0"

__all__ = ["AnchorError", "CacheError", "DataError", "KlasError", "__version__"]
