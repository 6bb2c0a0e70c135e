"""Linear probes on every block of every anchor, trained together from the activation cache.

Each probe reads one block's pooled output: ``logits = W @ pool(block_k(x)) + b`` with
``W [C, d_k]``. All probes of all anchors train in one pass over the caches per epoch: the
anchors' D_t caches are read in lock-step (same shuffled order, checked labels), and all probes
run as a few batched matmuls, one per distinct block width (`JointProbes`). Each probe's loss is its
own mean cross-entropy and the total is their sum, so every probe gets exactly the gradient it
would get alone.

Labels are the dataset's (default) or, label-free, the anchor's own predictions (argmax of the
logits stored in the cache).

Under torchrun the probes train with DistributedDataParallel: every rank reads its slice of each
batch of the one-process order (`batch_share`), and the loss is scaled so that the averaged
gradient is the one-process gradient; the result differs from one process by rounding only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from klas import distributed as dist
from klas.cache import CacheReader, Manifest
from klas.cache.format import DTYPES
from klas.cache.pairing import (SPLIT_KEYS, check_held_out, check_same_samples, check_same_weights, recorded,
                                split_settings)
from klas.cache.reader import batch_share, row_ranges
from klas.devices import triton_runs_on
from klas.errors import CacheError, UsageError
from klas.files import save_safetensors_atomic, write_json_atomic
from klas.progress import progress_bar
from klas.reading import finite_number, read_tensor_file_pair
from klas.scoring.settings import ProbesSection

__all__ = ["ProbeSet", "train_probes", "load_probes", "probe_table", "probe_losses", "JointProbes"]


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
    weights_digest: str | None = None  # of the anchor the probes were trained on (cache manifest)
    train_split: dict | None = None  # how D_t was split from the data (klas.cache.pairing.split_settings)

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
        save_safetensors_atomic(tensors, path)
        meta = {
            "anchor": self.anchor, "name": self.name, "block_names": self.block_names,
            "train_acc": self.train_acc, "val_acc": self.val_acc, "head_val_acc": self.head_val_acc,
            "labels": self.labels, "settings": self.settings, "weights_digest": self.weights_digest,
        }
        if self.train_split is not None:
            meta["train_split"] = self.train_split
        write_json_atomic(directory / f"{self.name}.json", meta)
        return path


def load_probes(directory: str | os.PathLike, name: str) -> ProbeSet:
    """Reads a ProbeSet saved by `ProbeSet.save` (safetensors: no pickle), checking the sidecar's
    fields and every tensor's shape and values; CacheError naming the file otherwise."""
    directory = Path(directory)
    meta_path, tensor_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    fix = "re-run `klas probes`"
    meta, tensors = read_tensor_file_pair(meta_path, tensor_path, what="probe file", fix=fix, error=CacheError,
                                          missing=f"no probes for {name!r} in {directory}; run `klas probes` first")

    def bad(what: str):
        raise CacheError(f"{meta_path}: {what}; {fix}")

    names = meta.get("block_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        bad("block_names is not a non-empty list of names")
    for key in ("anchor", "name", "labels"):
        if not isinstance(meta.get(key, ""), str):
            bad(f"{key} is not a string")
    m = len(names)
    accs = {}
    for key in ("train_acc", "val_acc"):
        v = meta.get(key, [])
        if not isinstance(v, list) or len(v) not in (0, m) or not all(_is_percent(x) for x in v):
            bad(f"{key} is not a list of {m} percentages")
        accs[key] = [float(x) for x in v]
    head = meta.get("head_val_acc")
    if head is not None and not _is_percent(head):
        bad("head_val_acc is not a percentage")
    if not isinstance(meta.get("settings", {}), dict) or not isinstance(meta.get("weights_digest", ""), (str, type(None))):
        bad("settings or weights_digest has the wrong type")
    train_split = meta.get("train_split")
    if train_split is not None and not (isinstance(train_split, dict) and set(train_split) <= set(SPLIT_KEYS) and all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in train_split.values())):
        bad("train_split is not a mapping of the split settings")
    try:
        weights = [tensors[f"block{k}.weight"] for k in range(1, m + 1)]
        biases = [tensors[f"block{k}.bias"] for k in range(1, m + 1)]
    except KeyError as e:
        raise CacheError(f"{tensor_path} lacks tensor {e}; {fix}") from None
    if len(tensors) != 2 * m:
        raise CacheError(f"{tensor_path} holds {len(tensors)} tensors, {meta_path} names {m} probes (2 each); {fix}")
    c = weights[0].shape[0] if weights[0].dim() == 2 else -1
    for k, (w, b) in enumerate(zip(weights, biases), start=1):
        if w.dim() != 2 or w.shape[0] != c or b.shape != (c,) or w.dtype != torch.float32 or b.dtype != torch.float32:
            raise CacheError(f"{tensor_path}: probe {k} has weight {list(w.shape)} {w.dtype} and bias {list(b.shape)} "
                             f"{b.dtype}, expected float32 [C, width] and [C] with one C for all; {fix}")
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise CacheError(f"{tensor_path}: probe {k} holds NaN/Inf values (training diverged, or the file was "
                             f"edited); {fix} (with a smaller --lr if training diverged)")
    return ProbeSet(anchor=meta.get("anchor", ""), name=meta.get("name", name), block_names=names, weights=weights,
                    biases=biases, train_acc=accs["train_acc"], val_acc=accs["val_acc"],
                    head_val_acc=None if head is None else float(head), labels=meta.get("labels", "true"),
                    settings=meta.get("settings", {}), weights_digest=meta.get("weights_digest"), train_split=train_split)


def _is_percent(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x <= 100.0


class JointProbes(nn.Module):
    """All probes of all anchors: cache rows of every anchor -> logits ``[b, M, C]`` (M = Σ blocks,
    anchor-major block order).

    Probes of equal width, across anchors, form one group that runs as one batched matmul. A group's
    input is copied out of the rows as runs of consecutive blocks (whole column ranges), never
    gathered column by column.
    """

    def __init__(self, manifests: Sequence[Manifest]):
        super().__init__()
        c = manifests[0].num_classes
        self.num_classes = c
        self.sizes = [len(m.block_entries) for m in manifests]
        starts = np.cumsum([0] + self.sizes)
        widths = sorted({b.width for m in manifests for b in m.block_entries})
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.group_runs: list[list[tuple[int, int, int]]] = []  # per group: (anchor, first column, blocks)
        order = []
        for w in widths:
            runs = []
            for a, m in enumerate(manifests):
                for k, b in enumerate(m.block_entries):
                    if b.width != w:
                        continue
                    order.append(int(starts[a]) + k)
                    last = runs[-1] if runs else None
                    if last and last[0] == a and last[1] + last[2] * w == b.offset:
                        runs[-1] = (a, last[1], last[2] + 1)
                    else:
                        runs.append((a, b.offset, 1))
            n_g = sum(r[2] for r in runs)
            self.group_runs.append(runs)
            bound = 1.0 / w ** 0.5  # nn.Linear's default initialisation, per probe
            self.weights.append(nn.Parameter(torch.empty(n_g, c, w).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n_g, c).uniform_(-bound, bound)))
            # per-feature standardisation of each probe's input (identity until `standardise` fits it)
            self.register_buffer(f"shift{len(self.weights) - 1}", torch.zeros(n_g, 1, w))
            self.register_buffer(f"scale{len(self.weights) - 1}", torch.ones(n_g, 1, w))
        self.register_buffer("unsort", torch.argsort(torch.tensor(order)), persistent=False)
        self.register_buffer("anchor_of_probe", torch.repeat_interleave(
            torch.arange(len(manifests)), torch.tensor(self.sizes)), persistent=False)
        self._order = order

    @property
    def num_blocks(self) -> int:
        return sum(self.sizes)

    def _group_inputs(self, rows: Sequence[torch.Tensor]):
        """Per width group: (features ``[n_g, b, w]`` fp32, contiguous, weights, bias, global probe
        indices). Probe-major, so that forward and backward are plain batched matmuls; each block's
        columns are converted and moved in one copy."""
        n = rows[0].shape[0]
        start = 0
        for g, (runs, w, b) in enumerate(zip(self.group_runs, self.weights, self.biases)):
            width = w.shape[2]
            x = torch.empty(w.shape[0], n, width, dtype=torch.float32, device=rows[0].device)
            i = 0
            for a, col, k in runs:
                x[i:i + k].copy_(rows[a][:, col:col + k * width].view(n, k, width).transpose(0, 1))
                i += k
            if self.standardised:
                x.sub_(getattr(self, f"shift{g}")).mul_(getattr(self, f"scale{g}"))
            yield x, w, b, self._order[start:start + w.shape[0]]
            start += w.shape[0]

    standardised = False

    @torch.no_grad()
    def standardise(self, batches) -> None:
        """Fits each probe's per-feature standardisation (mean 0, variance 1 over the rows `batches`
        yields, summed across ranks): pooled features of early blocks have offsets and scales far
        from those of late ones, and probes on them otherwise learn slowly or not at all. The fit is
        folded into the weights that `per_anchor` returns, so saved probes read raw features."""
        self.standardised = False
        sums = None
        count = 0
        for rows in batches:
            parts = [(x.double().sum(dim=1), x.double().square().sum(dim=1)) for x, *_ in self._group_inputs(rows)]
            sums = parts if sums is None else [(a + p, b + q) for (a, b), (p, q) in zip(sums, parts)]
            count += rows[0].shape[0]
        flat = torch.cat([torch.cat([a.flatten(), b.flatten()]) for a, b in sums]) if sums else None
        if flat is None:
            return
        total = dist.all_reduce_sum(torch.cat([flat, torch.tensor([float(count)], dtype=flat.dtype)]))
        flat, count = total[:-1], float(total[-1])
        pos = 0
        for g, w in enumerate(self.weights):
            size = w.shape[0] * w.shape[2]
            s1, s2 = flat[pos:pos + size].view(w.shape[0], 1, -1), flat[pos + size:pos + 2 * size].view(w.shape[0], 1, -1)
            pos += 2 * size
            mean = s1 / count
            std = (s2 / count - mean.square()).clamp_min(0).sqrt()
            getattr(self, f"shift{g}").copy_(mean.float())
            getattr(self, f"scale{g}").copy_(torch.where(std > 1e-6, 1.0 / std.clamp_min(1e-6), 1.0).float())
        self.standardised = True

    def forward(self, rows: Sequence[torch.Tensor], target: torch.Tensor | None = None, label_smoothing: float = 0.0,
                *, fused: bool = False, denominator: float | None = None) -> torch.Tensor:
        """rows: one ``[b, row_width_a]`` tensor per anchor -> logits ``[b, M, C]`` (a probe-major
        tensor seen sample-major); with a target ``[b, M]``, the loss instead (`loss`: one call, so
        DistributedDataParallel sees it)."""
        if target is not None:
            return self.loss(rows, target, label_smoothing, fused=fused, denominator=denominator)
        outs = [torch.baddbmm(b[:, None, :], x, w.transpose(1, 2)) for x, w, b, _ in self._group_inputs(rows)]
        return torch.cat(outs, dim=0).index_select(0, self.unsort).transpose(0, 1)

    def loss(self, rows: Sequence[torch.Tensor], target: torch.Tensor, label_smoothing: float = 0.0,
             *, fused: bool = False, denominator: float | None = None) -> torch.Tensor:
        """`probe_losses` of the probes' logits; target ``[b, M]``.

        fused: use the Triton kernel (kernels/fused_linear_ce.py), which never writes the logits.
        """
        b = target.shape[0]
        if not fused or b == 0:
            return probe_losses(self(rows), target, label_smoothing, denominator)
        from klas.kernels.fused_linear_ce import linear_cross_entropy

        total = 0.0
        for x, w, bias, idx in self._group_inputs(rows):
            group_target = target.index_select(1, torch.tensor(idx, device=target.device))
            total = total + linear_cross_entropy(x.transpose(0, 1), w, bias, group_target, label_smoothing)
        return total * (b / denominator) if denominator else total

    def per_anchor(self) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """``(W [C, d_k], b [C])`` for every block of every anchor, in order."""
        flat = [None] * self.num_blocks
        i = 0
        for g, (w, b) in enumerate(zip(self.weights, self.biases)):
            w, b = w.detach(), b.detach()
            if self.standardised:  # W (x - μ) ⊙ s + b = (W ⊙ s) x + (b − (W ⊙ s) μ)
                shift, scale = getattr(self, f"shift{g}"), getattr(self, f"scale{g}")
                w = w * scale
                b = b - torch.bmm(w, shift.transpose(1, 2)).squeeze(2)
            for j in range(w.shape[0]):
                flat[self._order[i]] = (w[j].clone(), b[j].clone())
                i += 1
        out, start = [], 0
        for size in self.sizes:
            out.append(flat[start:start + size])
            start += size
        return out


def _targets(batch, readers, mode: str, model: "JointProbes", device) -> torch.Tensor:
    """Target class of every probe for every sample ``[b, M]``: the label, or (pseudo) the argmax
    of that probe's anchor's own logits."""
    if mode == "true":
        y = batch[0][1].to(device)
        return y[:, None].expand(-1, model.num_blocks)
    per_anchor = []
    for (rows, _), reader in zip(batch, readers):
        lo = reader.manifest.logits_entry
        per_anchor.append(rows[:, lo.offset:lo.offset + lo.width].to(device).float().argmax(dim=1))
    return torch.stack(per_anchor, dim=1).index_select(1, model.anchor_of_probe)


def probe_losses(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                 denominator: float | None = None) -> torch.Tensor:
    """Each probe's cross-entropy summed over the batch and divided by `denominator` (default b: the
    mean), summed over the probes.

    logits ``[b, M, C]``, target ``[b, M]``. Written out rather than F.cross_entropy, whose CPU
    kernel is slow for the few classes of probes (C = 10: about 2x here); equal up to rounding.
    """
    m = logits.amax(dim=-1, keepdim=True).detach()
    lse = m.squeeze(-1) + (logits - m).exp().sum(dim=-1).log()
    nll = lse - logits.gather(2, target[..., None]).squeeze(2)
    if label_smoothing:
        nll = (1 - label_smoothing) * nll + label_smoothing * (lse - logits.mean(dim=-1))
    return nll.sum() / (denominator or logits.shape[0])


def _make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise UsageError(f"optimizer must be adamw, adam or sgd, got {name!r}")


def _lockstep(readers: Sequence[CacheReader], batch_size: int, ranges: list[tuple[int, int]] | None = None):
    """Yields per-batch lists of (rows, labels) from every reader, same sample order (`ranges`, or
    all rows in order)."""
    ranges = ranges if ranges is not None else [(0, readers[0].num_samples)]
    streams = [r.batches_over(ranges, batch_size) for r in readers]
    for batches in zip(*streams):
        tensors = [b.torch() for b in batches]
        for (rows, labels), reader in zip(tensors, readers):
            reader.check_values(rows, labels)
        first = tensors[0][1]
        for (_, labels), reader in zip(tensors[1:], readers[1:]):
            if not torch.equal(labels, first):
                raise CacheError(
                    f"caches {readers[0].dir} and {reader.dir} hold different samples (labels differ): "
                    "extract every anchor from the same data, split, seed and limit"
                )
        yield tensors


def _empty_batch(readers: Sequence[CacheReader]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A batch of no rows (a rank whose share of the last batch is empty still takes the step)."""
    out = []
    for r in readers:
        feats = torch.from_numpy(np.empty((0, r.manifest.row_width), dtype=DTYPES[r.manifest.dtype][1]))
        out.append((feats.view(torch.bfloat16) if r.manifest.dtype == "bfloat16" else feats,
                    torch.empty(0, dtype=torch.int64)))
    return out


@torch.no_grad()
def _accuracy(model, readers, mode: str, batch_size: int, device) -> tuple[list[np.ndarray], list[float]]:
    """Per-anchor per-block accuracy (percent), and each anchor's own head accuracy (this rank's
    share of the rows, summed over the ranks)."""
    ctx = dist.context()
    correct = torch.zeros(model.num_blocks, dtype=torch.int64)
    head = torch.zeros(len(readers), dtype=torch.int64)
    total = 0
    starts = np.cumsum([0] + model.sizes)
    share = row_ranges(readers[0].num_samples, chunk_rows=batch_size, rank=ctx.rank, world_size=ctx.world_size)
    for batch in _lockstep(readers, batch_size, share):
        rows = [r.to(device) for r, _ in batch]
        target = _targets(batch, readers, mode, model, device)
        correct += (model(rows).argmax(dim=-1) == target).sum(dim=0).cpu()
        for a, reader in enumerate(readers):
            lo = reader.manifest.logits_entry
            pred = rows[a][:, lo.offset:lo.offset + lo.width].float().argmax(1)
            head[a] += int((pred == target[:, starts[a]]).sum())
        total += len(batch[0][1])
    counts = dist.all_reduce_sum(torch.cat([correct, head, torch.tensor([total])]))
    correct, head, total = counts[:model.num_blocks], counts[model.num_blocks:-1], int(counts[-1])
    acc = 100.0 * correct.numpy() / total
    return [acc[s:s + n] for s, n in zip(starts, model.sizes)], [100.0 * int(h) / total for h in head]


def train_probes(
    train_caches: Sequence[str | os.PathLike | CacheReader],
    val_caches: Sequence[str | os.PathLike | CacheReader] | None = None,
    *,
    epochs: int = ProbesSection.epochs,
    batch_size: int = ProbesSection.batch_size,
    optimizer: str = "adamw",
    lr: float = ProbesSection.lr,
    weight_decay: float = ProbesSection.weight_decay,
    label_smoothing: float = 0.0,
    labels: str = ProbesSection.labels,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    evaluate: bool = True,
    backend: str = "auto",
    standardise: bool = ProbesSection.standardise,
    curve: str | os.PathLike | None = None,
) -> list[ProbeSet]:
    """Trains one probe per block of every anchor, all together, one pass over the caches per epoch.

    Args:
        train_caches: D_t caches, one per anchor, all over the same samples.
        val_caches: D_v caches in the same anchor order (for validation accuracy), or None.
        labels: "true" (dataset labels) or "pseudo" (each anchor's own predictions).
        lr: learning rate; a cosine schedule decays it to 0 over the run.
        evaluate: measure train/validation accuracy after training (one more pass over each).
        backend: "torch", "triton" (the fused linear + cross-entropy kernel) or "auto" (Triton on
            CUDA devices when it is importable).
        standardise: train each probe on standardised features (mean and variance fitted on D_t in
            one pass, folded into the saved weights); see JointProbes.standardise.
        curve: a CSV path for the training curve (step, epoch, loss per probe, lr; rank 0's batches),
            written after training (klas.training_log).

    Returns:
        One ProbeSet per anchor, in the order given.
    """
    if labels not in ("true", "pseudo"):
        raise UsageError(f"labels must be 'true' or 'pseudo', got {labels!r}")
    if epochs < 1 or batch_size < 1:
        raise UsageError("epochs and batch_size must be at least 1")
    finite_number(lr, "lr", error=UsageError, positive=True)
    finite_number(weight_decay, "weight_decay", error=UsageError, low=0.0, high=100.0)
    finite_number(label_smoothing, "label_smoothing", error=UsageError, low=0.0, high=1.0)
    if label_smoothing >= 1.0:
        raise UsageError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    if backend not in ("auto", "torch", "triton"):
        raise UsageError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    fused = backend == "triton" or (backend == "auto" and torch.device(device).type == "cuda" and triton_runs_on(device))
    readers = [c if isinstance(c, CacheReader) else CacheReader(c) for c in train_caches]
    if not readers:
        raise UsageError("no caches given")
    counts = {r.num_samples for r in readers}
    if len(counts) != 1:
        raise CacheError(f"the caches hold different sample counts {sorted(counts)}: extract them from the same split")
    val_readers = [c if isinstance(c, CacheReader) else CacheReader(c) for c in val_caches or []]
    if val_readers and len(val_readers) != len(readers):
        raise UsageError("give one validation cache per training cache")
    for t, v in zip(readers, val_readers):
        if t.manifest.split == v.manifest.split:
            raise CacheError(f"the training cache {t.dir} and the validation cache {v.dir} are both the "
                             f"{t.manifest.split!r} split: probes must be validated on held-out samples")
    classes = {r.manifest.num_classes for r in readers}
    if len(classes) != 1:
        raise CacheError(f"the anchors predict different class counts {sorted(classes)}")
    check_same_samples(readers)
    check_same_samples(val_readers)
    for t, v in zip(readers, val_readers):
        if v.manifest.anchor != t.manifest.anchor:
            raise CacheError(f"the validation cache {v.dir} is of anchor {v.manifest.anchor!r}, the training cache "
                             f"{t.dir} of {t.manifest.anchor!r}: give the caches in the same anchor order")
        check_same_weights(v, recorded(t, "the digest of its anchor's weights", t.manifest.weights_digest),
                           f"the training cache {t.dir}")
        check_held_out(split_settings(t.manifest.source), f"the training cache {t.dir}", v)
        if v.manifest.class_names != t.manifest.class_names:
            raise CacheError(f"{t.dir} and {v.dir} were extracted with different class names; extract both from "
                             "the same dataset")
    ctx = dist.context()
    if batch_size % ctx.world_size:
        raise UsageError(f"the probe batch size {batch_size} must be a multiple of the number of ranks "
                         f"{ctx.world_size} (each rank takes an equal slice of every batch)")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        model = JointProbes([r.manifest for r in readers]).to(device)
    if standardise:
        share = row_ranges(readers[0].num_samples, chunk_rows=4 * batch_size, rank=ctx.rank, world_size=ctx.world_size)
        model.standardise([r.to(device) for r, _ in batch] for batch in _lockstep(readers, 4 * batch_size, share))
    trained = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[torch.device(device).index] if ctx.backend == "nccl" else None)
    opt = _make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    n = readers[0].num_samples
    steps_per_epoch = -(-n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)

    bar = progress_bar(total=epochs * steps_per_epoch, disable=not progress or not dist.is_main(), desc="probes", unit="step")
    m = model.num_blocks
    losses, lrs = [], []  # per step; read back once after training (no sync per step)
    for epoch in range(epochs):
        order = row_ranges(n, shuffle=True, seed=seed, epoch=epoch)
        mine = batch_share(order, batch_size, ctx.rank, ctx.world_size)
        batches = _lockstep(readers, batch_size // ctx.world_size, mine)
        for step in range(steps_per_epoch):
            batch = next(batches, None) or _empty_batch(readers)
            target = _targets(batch, readers, labels, model, device)
            # DistributedDataParallel averages over ranks: rows summed over this rank, scaled by
            # world_size / (rows in the whole step), average to the one-process mean.
            rows_in_step = min(batch_size, n - step * batch_size)
            loss = trained([rows.to(device) for rows, _ in batch], target, label_smoothing, fused=fused,
                           denominator=rows_in_step / ctx.world_size)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lrs.append(sched.get_last_lr()[0])
            sched.step()
            losses.append(loss.detach())
            bar.update(1)
            if progress and dist.is_main():
                bar.set_postfix(loss=f"{loss.item() / m:.3f}")  # display only: one sync per step
    bar.close()

    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UsageError(f"probe training diverged (NaN/Inf weights) with lr {lr}; train again with a smaller --lr "
                         "(nothing was written)")
    if curve is not None and dist.is_main():
        from klas.training_log import TrainingLog

        log = TrainingLog(curve, ["step", "epoch", "loss", "lr"])
        for step, (value, rate) in enumerate(zip((torch.stack(losses).float().cpu() / m).tolist(), lrs)):
            log.row(step=step, epoch=step // steps_per_epoch, loss=value, lr=rate)
        log.close()
    train_acc = [[] for _ in readers]
    if evaluate:
        train_acc, _ = _accuracy(model, readers, labels, 4 * batch_size, device)
    val_acc, head_acc = [None] * len(readers), [None] * len(readers)
    if val_readers and evaluate:
        val_acc, head_acc = _accuracy(model, val_readers, labels, 4 * batch_size, device)
    settings = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                    label_smoothing=label_smoothing, seed=seed, standardise=standardise)
    out = []
    for a, (w_b, reader) in enumerate(zip(model.per_anchor(), readers)):
        m = reader.manifest
        out.append(ProbeSet(
            anchor=m.anchor, name=reader.dir.parent.name, block_names=[b.name for b in m.block_entries],
            weights=[w for w, _ in w_b], biases=[b for _, b in w_b],
            train_acc=[float(x) for x in train_acc[a]],
            val_acc=[float(x) for x in val_acc[a]] if val_acc[a] is not None else [],
            head_val_acc=head_acc[a], labels=labels, settings=settings, weights_digest=m.weights_digest,
            train_split=split_settings(m.source) if m.split == "train" else None,
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
