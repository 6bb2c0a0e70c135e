"""Scoring: probes on every block, Θ between every pair of probes, Γ = Ω / Σ (METHOD.md §3–§4)."""
from klas._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "kl_matrix": "kl",
    "kl_matrix_from_features": "kl",
    "kl_matrix_reference": "kl",
    "ThetaAccumulator": "kl",
    "BACKENDS": "kl",
    "train_probes": "probes",
    "load_probes": "probes",
    "ProbeSet": "probes",
    "JointProbes": "probes",
    "probe_table": "probes",
    "CacheFeatures": "features",
    "score": "scores",
    "load_scores": "scores",
    "stitch_scores": "scores",
    "Scores": "scores",
    "ScoreSection": "settings",
    "ProbesSection": "settings",
    "AnchorEntry": "scores",
})
