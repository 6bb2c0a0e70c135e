"""klas: choose where to stitch pretrained networks (KLAS), fast.

The public API in two layers. Symbols (Θ, Σ, Γ, D_t / D_v, FLOPs) are defined in docs/METHOD.md.

Tensors: your own models and features, nothing written to disk.
    load_anchor(spec)            a model of klas's anchor kinds (timm, the CIFAR families), cut into blocks
    wrap_model(model, blocks)    any nn.Module as an anchor: hooks to score, a sequential cut to stitch
    AnchorFeatures(...)          one anchor's per-block features and logits on D_t and D_v, with its FLOPs
    scores_from_tensors(...)     probes trained in memory (the recipe of `klas probes`); Θ, Σ, Γ as Scores
    kl_matrix(src, tgt)          Θ [Ks, Kt] between two stacks of logits [K, N, C]
    kl_matrix_from_features(...) Θ straight from pooled features and probe weights
    stitch_scores(theta, sigma)  Γ from Θ between two anchors' blocks and the target's Σ
    select(scores)               KLAS's selection (a Selection) from Scores
    select_snnet_nearest(scores) SN-Net's fixed rules on the same Scores, the baseline
    to_snnet_configs(selection)  the selection as SN-Net's own configuration list
    to_snnet(selection)          the selection in klas's per-pair form (`klas export --format klas-pairs`)

Files: the stages of the `klas` command, reading and writing checked files.
    extract(anchors, data, out)  the activation caches of every anchor and split
    train_probes(caches)         the probes of every anchor, from its caches
    score(cache, probes, out)    Θ, Σ, Γ from the caches and probes, saved as scores.safetensors + .json

Errors: KlasError and its kinds AnchorError, CacheError, DataError (each says what to do).

The names are imported on first use (klas._exports), so `import klas` and the `klas` command's
--help and --version start without loading torch.
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
