"""Evaluation: every route on a split, frontiers and curves, reports and plots, the recovery test, seeds."""
from klas._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "evaluate_routes": "evaluate",
    "RouteResult": "evaluate",
    "pareto_frontier": "evaluate",
    "write_report": "report",
    "headline": "report",
    "pair_heatmap": "plots",
    "selection_scatter": "plots",
    "recovery_plot": "plots",
    "training_curves": "plots",
    "evaluate_anchor": "anchor_eval",
    "recovery_report": "recovery",
    "train_configurations": "recovery",
    "method_picks": "recovery",
    "RecoverySettings": "recovery_settings",
    "RecoverySection": "recovery_settings",
    "summarise_seeds": "seeds",
    "summary_lines": "seeds",
    "mean_interval": "stats",
})
