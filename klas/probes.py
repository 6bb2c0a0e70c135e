"""Linear probes on every block of every anchor, trained together from the activation cache.

Each probe reads one block's pooled output: ``logits = W @ pool(block_k(x)) + b`` with
``W [C, d_k]``. All probes of all anchors train in one pass over the caches per epoch: the
anchors' D_t caches are read in lock-step (same shuffled order, checked labels), and the probes of
one anchor run as a few batched matmuls, one per distinct block width. Each probe's loss is its
own mean cross-entropy and the total is their sum, so every probe gets exactly the gradient it
would get alone.

Labels are the dataset's (default) or, label-free, the anchor's own predictions (argmax of the
logits stored in the cache).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from klas.cache import CacheReader, Manifest
from klas.errors import CacheError

__all__ = ["ProbeSet", "train_probes", "load_probes", "probe_table", "CacheProbes"]


@dataclass
class ProbeSet:
    """The probes of one anchor: one ``(W [C, d_k], b [C])`` per block, with accuracies (percent)."""

    anchor: str  # spec
    name: str
    block_names: list[str]
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    head_val_acc: float | None = None  # the anchor's own head on the validation split
    labels: str = "true"
    settings: dict = field(default_factory=dict)

    def probes(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.weights, self.biases))

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``<name>.safetensors`` (W_k, b_k) and ``<name>.json`` (names, accuracies)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for k, (w, b) in enumerate(zip(self.weights, self.biases), start=1):
            tensors[f"block{k}.weight"] = w.detach().float().cpu().contiguous()
            tensors[f"block{k}.bias"] = b.detach().float().cpu().contiguous()
        path = directory / f"{self.name}.safetensors"
        tmp = path.with_suffix(".safetensors.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
        meta = {
            "anchor": self.anchor, "name": self.name, "block_names": self.block_names,
            "train_acc": self.train_acc, "val_acc": self.val_acc, "head_val_acc": self.head_val_acc,
            "labels": self.labels, "settings": self.settings,
        }
        from klas.cache.format import write_json_atomic

        write_json_atomic(directory / f"{self.name}.json", meta)
        return path


def load_probes(directory: str | os.PathLike, name: str) -> ProbeSet:
    """Reads a ProbeSet saved by `ProbeSet.save` (safetensors: no pickle)."""
    directory = Path(directory)
    meta_path, tensor_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        raise CacheError(f"no probes for {name!r} in {directory}; run `klas probes` first")
    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(tensor_path))
    m = len(meta["block_names"])
    try:
        weights = [tensors[f"block{k}.weight"] for k in range(1, m + 1)]
        biases = [tensors[f"block{k}.bias"] for k in range(1, m + 1)]
    except KeyError as e:
        raise CacheError(f"{tensor_path} lacks tensor {e}; re-run `klas probes`") from None
    return ProbeSet(anchor=meta["anchor"], name=meta["name"], block_names=meta["block_names"], weights=weights,
                    biases=biases, train_acc=meta["train_acc"], val_acc=meta["val_acc"],
                    head_val_acc=meta.get("head_val_acc"), labels=meta.get("labels", "true"),
                    settings=meta.get("settings", {}))


class CacheProbes(nn.Module):
    """All probes of one anchor, reading a cache row ``[b, row_width]`` -> logits ``[b, m, C]``.

    Blocks of equal width are grouped so that each group is one batched matmul.
    """

    def __init__(self, manifest: Manifest):
        super().__init__()
        blocks = manifest.block_entries
        c = manifest.num_classes
        self.num_blocks = len(blocks)
        self.num_classes = c
        widths = sorted({b.width for b in blocks})
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.group_columns: list[torch.Tensor] = []  # per group: column indices [n_g * w]
        self.group_blocks: list[list[int]] = []  # per group: 0-based block positions
        for w in widths:
            members = [k for k, b in enumerate(blocks) if b.width == w]
            cols = torch.cat([torch.arange(blocks[k].offset, blocks[k].offset + w) for k in members])
            self.group_columns.append(cols)
            self.group_blocks.append(members)
            # nn.Linear's default initialisation, per probe
            bound = 1.0 / w ** 0.5
            self.weights.append(nn.Parameter(torch.empty(len(members), c, w).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(len(members), c).uniform_(-bound, bound)))
        order = torch.tensor([k for members in self.group_blocks for k in members])
        self.register_buffer("unsort", torch.argsort(order), persistent=False)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        outs = []
        for cols, w, b in zip(self.group_columns, self.weights, self.biases):
            n_g, c, width = w.shape
            x = rows.index_select(1, cols.to(rows.device)).view(rows.shape[0], n_g, width).float()
            outs.append(torch.einsum("bnw,ncw->bnc", x, w) + b)
        return torch.cat(outs, dim=1).index_select(1, self.unsort)

    def per_block(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(W [C, d_k], b [C])`` for blocks 1..m in order."""
        out = [None] * self.num_blocks
        for members, w, b in zip(self.group_blocks, self.weights, self.biases):
            for i, k in enumerate(members):
                out[k] = (w[i].detach().clone(), b[i].detach().clone())
        return out


def _batch_targets(batch_rows: torch.Tensor, labels: torch.Tensor, manifest: Manifest, mode: str) -> torch.Tensor:
    if mode == "true":
        return labels
    logits = manifest.logits_entry
    return batch_rows[:, logits.offset:logits.offset + logits.width].float().argmax(dim=1)


def _make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be adamw, adam or sgd, got {name!r}")


def _lockstep(readers: Sequence[CacheReader], batch_size: int, **order):
    """Yields per-batch lists of (rows, labels) from every reader, same sample order."""
    streams = [r.batches(batch_size, **order) for r in readers]
    for batches in zip(*streams):
        tensors = [b.torch() for b in batches]
        first = tensors[0][1]
        for (_, labels), reader in zip(tensors[1:], readers[1:]):
            if not torch.equal(labels, first):
                raise CacheError(
                    f"caches {readers[0].dir} and {reader.dir} hold different samples (labels differ): "
                    "extract every anchor from the same data, split, seed and limit"
                )
        yield tensors


@torch.no_grad()
def _accuracy(models, readers, mode: str, batch_size: int, device) -> tuple[list[np.ndarray], list[float]]:
    """Per-anchor per-block accuracy (percent), and each anchor's own head accuracy."""
    correct = [torch.zeros(m.num_blocks, dtype=torch.int64) for m in models]
    head = [0] * len(models)
    total = 0
    for batch in _lockstep(readers, batch_size):
        for a, ((rows, labels), model, reader) in enumerate(zip(batch, models, readers)):
            rows = rows.to(device)
            target = _batch_targets(rows, labels.to(device), reader.manifest, mode)
            pred = model(rows).argmax(dim=-1)
            correct[a] += (pred == target[:, None]).sum(dim=0).cpu()
            lo = reader.manifest.logits_entry
            head[a] += int((rows[:, lo.offset:lo.offset + lo.width].float().argmax(1) == target).sum())
        total += len(batch[0][1])
    return [100.0 * c.numpy() / total for c in correct], [100.0 * h / total for h in head]


def train_probes(
    train_caches: Sequence[str | os.PathLike | CacheReader],
    val_caches: Sequence[str | os.PathLike | CacheReader] | None = None,
    *,
    epochs: int = 4,
    batch_size: int = 256,
    optimizer: str = "adamw",
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
    labels: str = "true",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    evaluate: bool = True,
) -> list[ProbeSet]:
    """Trains one probe per block of every anchor, all together, one pass over the caches per epoch.

    Args:
        train_caches: D_t caches, one per anchor, all over the same samples.
        val_caches: D_v caches in the same anchor order (for validation accuracy), or None.
        labels: "true" (dataset labels) or "pseudo" (each anchor's own predictions).
        lr: learning rate; a cosine schedule decays it to 0 over the run.
        evaluate: measure train/validation accuracy after training (one more pass over each).

    Returns:
        One ProbeSet per anchor, in the order given.
    """
    if labels not in ("true", "pseudo"):
        raise ValueError(f"labels must be 'true' or 'pseudo', got {labels!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    readers = [c if isinstance(c, CacheReader) else CacheReader(c) for c in train_caches]
    if not readers:
        raise ValueError("no caches given")
    counts = {r.num_samples for r in readers}
    if len(counts) != 1:
        raise CacheError(f"the caches hold different sample counts {sorted(counts)}: extract them from the same split")
    classes = {r.manifest.num_classes for r in readers}
    if len(classes) != 1:
        raise CacheError(f"the anchors predict different class counts {sorted(classes)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        models = [CacheProbes(r.manifest).to(device) for r in readers]
    params = [p for m in models for p in m.parameters()]
    opt = _make_optimizer(optimizer, params, lr, weight_decay)
    steps_per_epoch = -(-readers[0].num_samples // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)

    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, desc="probes", unit="step")
    for epoch in range(epochs):
        for batch in _lockstep(readers, batch_size, shuffle=True, seed=seed, epoch=epoch):
            loss = 0.0
            for (rows, y), model, reader in zip(batch, models, readers):
                rows = rows.to(device)
                target = _batch_targets(rows, y.to(device), reader.manifest, labels)
                logits = model(rows)  # [b, m, C]
                b, m, c = logits.shape
                # mean over the batch per probe, summed over probes
                loss = loss + F.cross_entropy(logits.reshape(b * m, c), target.repeat_interleave(m),
                                              label_smoothing=label_smoothing) * m
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item() / sum(m.num_blocks for m in models):.3f}")  # display only
    bar.close()

    train_acc = [[] for _ in models]
    if evaluate:
        train_acc, _ = _accuracy(models, readers, labels, 4 * batch_size, device)
    val_acc, head_acc = [None] * len(models), [None] * len(models)
    if val_caches is not None and evaluate:
        val_readers = [c if isinstance(c, CacheReader) else CacheReader(c) for c in val_caches]
        if len(val_readers) != len(readers):
            raise ValueError("give one validation cache per training cache")
        val_acc, head_acc = _accuracy(models, val_readers, labels, 4 * batch_size, device)
    settings = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                    label_smoothing=label_smoothing, seed=seed)
    out = []
    for a, (model, reader) in enumerate(zip(models, readers)):
        w_b = model.per_block()
        m = reader.manifest
        out.append(ProbeSet(
            anchor=m.anchor, name=reader.dir.parent.name, block_names=[b.name for b in m.block_entries],
            weights=[w for w, _ in w_b], biases=[b for _, b in w_b],
            train_acc=[float(x) for x in train_acc[a]],
            val_acc=[float(x) for x in val_acc[a]] if val_acc[a] is not None else [],
            head_val_acc=head_acc[a], labels=labels, settings=settings,
        ))
    return out


def probe_table(probe_sets: Sequence[ProbeSet]) -> str:
    """A plain-text table: per anchor and block, train / validation accuracy of its probe."""
    lines = []
    for ps in probe_sets:
        head = f", head on D_v {ps.head_val_acc:.2f}%" if ps.head_val_acc is not None else ""
        lines.append(f"{ps.name} ({ps.anchor}; labels: {ps.labels}{head})")
        lines.append(f"  {'block':>5} {'name':<18} {'train %':>8} {'val %':>8}")
        for k, name in enumerate(ps.block_names):
            val = f"{ps.val_acc[k]:8.2f}" if ps.val_acc else f"{'-':>8}"
            lines.append(f"  {k + 1:>5} {name:<18} {ps.train_acc[k]:8.2f} {val}")
    return "\n".join(lines)
