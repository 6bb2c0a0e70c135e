"""Figures: Θ / Γ heatmaps per anchor pair, the selection scatter. matplotlib with the Agg backend (no display needed)."""
from __future__ import annotations

from pathlib import Path

import torch

from klas.files import atomic_path

__all__ = ["pair_heatmap", "selection_scatter", "recovery_plot", "training_curves"]


def _save(fig, path: Path) -> Path:
    """Writes the figure under a temporary name, then renames it over `path` (no half-written PNG)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def pair_heatmap(theta: torch.Tensor, gamma: torch.Tensor, source: str, target: str, path: Path) -> Path:
    """Θ(P^f_i ‖ P^g_j) ``[m_f, m_g]`` and Γ ``[m_f − 1, m_g − 1]`` side by side, 1-indexed axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    for ax, data, title in ((axes[0], theta, "Θ(P^f_i ‖ P^g_j)  (last row/column: heads)"),
                            (axes[1], gamma, "Γ(i, j) = Ω / Σ  (lower is better)")):
        im = ax.imshow(data.numpy(), origin="lower", aspect="auto", cmap="viridis",
                       extent=(0.5, data.shape[1] + 0.5, 0.5, data.shape[0] + 0.5))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"target block j ({target})")
        ax.set_ylabel(f"source block i ({source})")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax)
    best = torch.nonzero(gamma == gamma.min())[0]
    axes[1].plot(best[1] + 1, best[0] + 1, "r*", markersize=12, label=f"min Γ at (i={best[0] + 1}, j={best[1] + 1})")
    axes[1].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{source} → {target}")
    return _save(fig, path)


def selection_scatter(selection, path: Path, baseline=None) -> Path:
    """FLOPs vs Γ of every configuration, one panel per anchor pair of `selection` or `baseline`:
    the selected ones marked, bucket edges drawn, a baseline's configurations as open squares.
    Configurations without a Γ (SN-Net's j = 0 or i = m_f) sit on the lower edge as crosses at their FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    own = {(p.source, p.target): p for p in selection.pairs}
    other = {(p.source, p.target): p for p in baseline.pairs} if baseline is not None else {}
    keys = list(own) + [k for k in other if k not in own]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.4), squeeze=False, constrained_layout=True)
    for ax, key in zip(axes[0], keys):
        pair = own.get(key) or other[key]
        ax.scatter([c.flops / 1e6 for c in pair.configs], [c.gamma for c in pair.configs], s=10, c="0.7",
                   label=f"all ({len(pair.configs)})")
        if key in own:
            _mark(ax, own[key].selected, dict(s=28, c="C3"), f"{selection.method}")
            for e in pair.edges:
                ax.axvline(e / 1e6, color="0.85", lw=0.8, zorder=0)
        if key in other:
            _mark(ax, other[key].selected, dict(s=60, facecolors="none", edgecolors="C0"), baseline.method)
        ax.set_yscale("log")
        ax.set_xlabel("MFLOPs of the stitched network (multiply-accumulates)")
        ax.set_ylabel("Γ (lower is better)")
        ax.set_title(f"{key[0]} → {key[1]}", fontsize=10)
        ax.legend(fontsize=8)
    title = f"{selection.method}: τ = {selection.tau} ({selection.tau_mode})"
    fig.suptitle(title + (f"; {baseline.method} as open squares" if baseline is not None else ""))
    return _save(fig, path)


def _mark(ax, configs, style: dict, label: str) -> None:
    """Configurations with a Γ at (FLOPs, Γ); those without one as crosses on the lower edge."""
    scored = [c for c in configs if c.gamma == c.gamma]
    unscored = [c for c in configs if c.gamma != c.gamma]
    ax.scatter([c.flops / 1e6 for c in scored], [c.gamma for c in scored], label=f"{label} ({len(scored)})", **style)
    if unscored:
        color = style.get("edgecolors", style.get("c"))
        ax.scatter([c.flops / 1e6 for c in unscored], [0.02] * len(unscored), marker="x", c=color,
                   transform=ax.get_xaxis_transform(), label=f"{label}, no Γ ({len(unscored)})")


def recovery_plot(report: dict, path: Path) -> Path:
    """The recovery test: top-1 against FLOPs of every configuration (after finetuning; open circles
    after the least-squares fit alone), the good set ringed, one panel per method with its picks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    configs = report["configurations"]
    methods = [m for m in report["methods"] if "picked" in report["methods"][m]]
    cols = min(4, max(1, len(methods)))
    rows = -(-len(methods) // cols) if methods else 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), sharex=True, sharey=True,
                             constrained_layout=True, squeeze=False)
    x = [c["flops"] / 1e6 for c in configs]
    good = [(c["flops"] / 1e6, c["top1"]) for c in configs if c["good"]]
    for k, ax in enumerate(axes.flat):
        if k >= len(methods):
            ax.axis("off")
            continue
        m = methods[k]
        ax.scatter(x, [c["top1_init"] for c in configs], s=8, facecolors="none", edgecolors="0.75", label="lstsq init")
        ax.scatter(x, [c["top1"] for c in configs], s=8, c="0.55", label="finetuned")
        ax.scatter([g[0] for g in good], [g[1] for g in good], s=40, facecolors="none", edgecolors="k", label="good set")
        picked = {tuple(p) for p in report["methods"][m]["picked"]}
        mine = [c for c in configs if (c["i"], c["j"]) in picked]
        ax.scatter([c["flops"] / 1e6 for c in mine], [c["top1"] for c in mine], s=16, color=f"C{k}", label="picked")
        s = report["methods"][m]
        pr = "n/a" if s["precision"] is None else f"{s['precision']:.2f}"
        rc = "n/a" if s["recall"] is None else f"{s['recall']:.2f}"
        ax.set_title(f"{m}: precision {pr}, recall {rc}", fontsize=9)
        ax.grid(alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("test top-1 (%)")
        if k >= (rows - 1) * cols:
            ax.set_xlabel("MFLOPs (multiply-accumulates)")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    pair = report.get("pair", {})
    fig.suptitle(f"recovery test {pair.get('source', '')} -> {pair.get('target', '')}: "
                 f"{len(configs)} configurations, {len(good)} good (δ = {report['settings']['delta']} points)")
    return _save(fig, path)


def training_curves(curves: dict[str, dict[str, list[float]]], path: Path, title: str = "") -> Path | None:
    """Loss (running mean over 50 steps) and learning rate against step, one line per training
    (name -> klas.training_log.read_curve of its CSV); None when no curve has rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: c for name, c in curves.items() if c.get("step") and c.get("loss")}
    if not curves:
        return None
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True, constrained_layout=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    for n, (name, c) in enumerate(curves.items()):
        loss = torch.tensor(c["loss"], dtype=torch.float64)
        window = min(50, len(loss))
        smooth = loss.unfold(0, window, 1).nanmean(dim=1) if window > 1 else loss
        steps = c["step"][window - 1:]
        ax_loss.plot(steps, smooth.tolist(), color=f"C{n}", lw=1.2, label=f"{name} ({len(loss)} steps)")
        if c.get("lr"):
            ax_lr.plot(c["step"], c["lr"], color=f"C{n}", lw=1)
    ax_loss.set_ylabel(f"training loss (running mean of {min(50, max(len(c['loss']) for c in curves.values()))})")
    ax_loss.set_title(title or "training curves", fontsize=10)
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    return _save(fig, Path(path))
