"""The divergence Θ between probe distributions, for every pair of probes at once.

    Θ[a, b] = mean over samples x of KL(softmax(src[a](x) / T) ‖ softmax(tgt[b](x) / T))

With p = softmax(z_a), log q = z_b − lse(z_b), the sum over samples and classes splits into
a per-source term and one matrix product::

    Σ_x Σ_c p_a log p_a  −  Σ_x Σ_c p_a log q_b        ( [Ks] − [Ks, Kt] )

The second term is ``P [Ks, N·C] @ logQ [Kt, N·C]^T``: no loop over pairs. Samples stream through in
chunks (`ThetaAccumulator`), so neither logits nor probabilities for all N exist at once.
Cancellation: the two terms are each about N·entropy and nearly cancel for near-identical probes.
The torch path multiplies by the max-shifted logits u = log q + L (L = log Σ exp u ≤ log C, added
back once), so no fp32 sum grows with N: each chunk's product covers its own samples, bounded by
one sample's logit range, and chunk sums add up in float64; the native kernel does the same
with blocks of a few samples, and the Triton kernel uses Kahan compensation. Θ ≈ 0 then comes out
≈ 0 (tested to 1e-5), not as a large negative rounding error.

Backends of `kl_matrix`: "reference" (float64, one F.kl_div per pair: the oracle), "torch" (the
chunked matrix form above in PyTorch operations: the twin of both kernels), "native" (the fused C++
CPU kernel csrc/theta_cpu.cpp in klas._C: softmax statistics and product block by block in each
core's cache), "triton" (kernels/kl_matrix.py), "auto" (triton for CUDA tensors when Triton is
importable, native for CPU tensors when klas._C is built, else torch).
"""
from __future__ import annotations

import functools
import math
import os
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from klas.devices import triton_runs_on
from klas.errors import UsageError
from klas.limits import BACKENDS, MAX_SCALED_LOGIT, MAX_TEMPERATURE, MIN_TEMPERATURE

__all__ = [
    "ThetaAccumulator",
    "check_logit_range",
    "MAX_SCALED_LOGIT",
    "kl_matrix",
    "kl_matrix_reference",
    "kl_matrix_torch",
    "kl_matrix_native",
    "native_available",
    "kl_matrix_from_features",
    "probe_logits",
    "default_chunk",
]


@functools.cache
def _native_module():
    try:
        from klas import _C
    except ImportError:
        return None
    return _C if hasattr(_C, "theta_sums") else None


def native_available() -> bool:
    """Whether the native CPU kernel (klas._C.theta_sums) is built."""
    return _native_module() is not None


def _native_reads_in_place(z: torch.Tensor) -> bool:
    """Whether the native kernel reads these logits as they are: float32 with contiguous classes."""
    return z.dtype == torch.float32 and z.stride(-1) == 1


def _native_view(z: torch.Tensor):
    """A float32 NumPy view (a copy only where needed) of CPU logits ``[K, n, C]`` with contiguous
    classes, as the native kernel reads them."""
    z = z.detach()
    return (z if _native_reads_in_place(z) else z.float().contiguous()).numpy()


def check_logit_range(z: torch.Tensor, temperature: float, name: str) -> None:
    """UsageError unless the logits `z` are finite and |z| / temperature <= MAX_SCALED_LOGIT, naming
    the real cause: NaN/Inf values, or finite values too large for the softmax's float32 arithmetic."""
    if not torch.isfinite(z).all():
        raise UsageError(f"{name} holds NaN or Inf values")
    top = float(z.detach().abs().max().double()) / temperature if z.numel() else 0.0
    if top > MAX_SCALED_LOGIT:
        raise _beyond_range(name, top)


def _beyond_range(name: str, top: float) -> UsageError:
    """The error for logits `name` whose largest |logit| / temperature is `top` > MAX_SCALED_LOGIT."""
    return UsageError(f"{name} reach |logit| / temperature = {top:.3g}, beyond the {MAX_SCALED_LOGIT:g} that Θ is "
                      "computed for (the softmax is one-hot long before, and float32 sums would overflow); scale "
                      "the logits down or raise the temperature")


def _check_chunk_range(z: torch.Tensor, temperature: float, name: str) -> None:
    """`check_logit_range` for one chunk of the streaming paths, in a single pass over it (its min
    and max) when the chunk is fine."""
    lo, hi = torch.aminmax(z.detach())
    top = max(-float(lo), float(hi))
    if not math.isfinite(top) or top / temperature > MAX_SCALED_LOGIT:
        check_logit_range(z, temperature, name)


def _check_finite_sums(self_term: torch.Tensor, shift: torch.Tensor, cross: torch.Tensor) -> None:
    """UsageError naming the side whose sums went non-finite. Each chunk's logits were checked
    before (`_check_chunk_range`, or the native kernel's own: finite, |z| / τ bounded), so this is
    the net behind that check: any NaN or ±Inf logit makes these sums non-finite (it spreads through
    its sample's max and softmax into L; a −Inf meets a zero probability, 0 · −Inf, in Σ p u of a
    source row, or a positive one in the product)."""
    if not torch.isfinite(self_term).all():
        raise UsageError("logits_src holds NaN or Inf values")
    if not (torch.isfinite(shift).all() and torch.isfinite(cross).all()):
        raise UsageError("logits_tgt holds NaN or Inf values")


def default_chunk(num_probes: int, num_classes: int, budget_bytes: int = 4 << 20) -> int:
    """Samples per chunk so that one chunk's fp32 probabilities of all probes fit `budget_bytes`
    (4 MiB by default: the chunk's few passes then run in the CPU's cache, not from DRAM)."""
    return max(4, budget_bytes // (4 * max(1, num_probes) * max(1, num_classes)))


def _check_logits(src: torch.Tensor, tgt: torch.Tensor, *, temperature: float | None = None) -> None:
    """UsageError for logits of the wrong shape, or (with `temperature`) out of `check_logit_range`."""
    for name, t in (("logits_src", src), ("logits_tgt", tgt)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise UsageError(f"{name} must be a tensor [K, N, C], got {getattr(t, 'shape', type(t))}")
        if 0 in t.shape:
            raise UsageError(f"{name} has an empty dimension: {list(t.shape)}")
    if src.shape[1] != tgt.shape[1]:
        raise UsageError(f"sample counts differ: logits_src has N={src.shape[1]}, logits_tgt N={tgt.shape[1]}")
    if src.shape[2] != tgt.shape[2]:
        raise UsageError(f"class counts differ: logits_src has C={src.shape[2]}, logits_tgt C={tgt.shape[2]}")
    if temperature is not None:
        for name, t in (("logits_src", src), ("logits_tgt", tgt)):
            check_logit_range(t, temperature, name)


def _softmax_stats(z: torch.Tensor, temperature: float, entropy: bool = True) -> tuple[torch.Tensor | None, ...]:
    """For logits ``[K, n, C]``: p ``[K, n, C]``, the shifted logits u = (z − max z) / T
    ``[K, n, C]`` (so log p = u − L), −H ``[K, n]`` and L = log Σ_c exp(u) ``[K, n]`` (fp32), where
    H is each (probe, sample)'s entropy (None unless `entropy`).

    Many classes: five passes over the chunk (max, shift, softmax as one fused kernel on the
    contiguous shifted logits, Σ p·u, max p); L needs no second exp, since at the largest logit
    u = 0 and so max p = exp(−L). Few classes: exp, sum and divide written out, because the CPU
    softmax kernel is about 2x slower there (C = 10).
    """
    z = z.float()
    u = z - z.amax(dim=-1, keepdim=True)
    if temperature != 1.0:
        u.div_(temperature)
    if u.shape[-1] >= 64:
        p = torch.softmax(u, dim=-1)
        log_total = p.amax(dim=-1).log_().neg_()
    else:
        p = u.exp()
        total = p.sum(dim=-1)
        p.div_(total[..., None])
        log_total = total.log_()
    neg_ent = torch.linalg.vecdot(p, u).sub_(log_total) if entropy else None  # Σ p log p = Σ p u − L
    return p, u, neg_ent, log_total


def use_compile() -> bool:
    """Whether the CPU path runs its elementwise work through torch.compile (KLAS_TORCH_COMPILE=1).
    Faster by fusing the softmax passes, at the price of a compile on first use."""
    return os.environ.get("KLAS_TORCH_COMPILE", "0") == "1"


@functools.cache
def _softmax_stats_compiled():
    return torch.compile(_softmax_stats, dynamic=True)


class ThetaAccumulator:
    """Running sums of Θ over chunks of samples.

    Args:
        num_src, num_tgt: probe counts Ks, Kt.
        temperature: softmax temperature T.
    """

    def __init__(self, num_src: int, num_tgt: int, *, temperature: float = 1.0, device=None):
        self.temperature = check_temperature(temperature)
        # Θ = (self_term[a] − cross[a, b] + shift[b]) / count, all sums over samples (and classes)
        self.self_term = torch.zeros(num_src, dtype=torch.float64, device=device)  # Σ p_a log p_a
        self.cross = torch.zeros(num_src, num_tgt, dtype=torch.float64, device=device)  # Σ p_a u_b = Σ p_a (log q_b + L_b)
        self.shift = torch.zeros(num_tgt, dtype=torch.float64, device=device)  # Σ L_b
        self.count = 0

    def update(self, z_src: torch.Tensor, z_tgt: torch.Tensor) -> None:
        """Adds one chunk. z_src: ``[Ks, n, C]``, z_tgt: ``[Kt, n, C]`` logits of the same n samples
        (pass the same tensor twice for Θ of a set against itself: it is then normalised once).

        Cancellation: Σ p_a log q_b and Σ p_a log p_a are each about −N·entropy, and Θ is their
        small difference. The product runs on the max-shifted logits u_b = log q_b + L_b, whose
        per-sample sums Σ_c p_a u_b stay within the logit range of one sample (L_b ≤ log C is added
        back through `shift`); each chunk's fp32 product covers n samples only, and chunks add up
        in float64. No fp32 sum grows with N, and Θ ≈ 0 comes out ≈ 0 (tested to 1e-5) even for
        near-identical probes.
        """
        ks, n, c = z_src.shape
        stats = _softmax_stats_compiled() if use_compile() else _softmax_stats
        same = z_tgt is z_src
        _check_chunk_range(z_src, self.temperature, "logits_src")
        if not same:
            _check_chunk_range(z_tgt, self.temperature, "logits_tgt")
        # Θ of a set against itself: Σ_c p_a u_a, summed over the chunk, is the product's diagonal,
        # so Σ p log p needs no pass of its own.
        p, u_p, neg_ent_p, log_total_p = stats(z_src, self.temperature, entropy=not same)
        _, u, _, log_total_q = (p, u_p, None, log_total_p) if same else stats(z_tgt, self.temperature, entropy=False)
        kt = u.shape[0]
        product = p.reshape(ks, n * c) @ u.reshape(kt, n * c).T
        if same:  # the product's diagonal: Σ over the chunk's samples of Σ_c p_a u_a
            self_sum = product.diagonal().double() - log_total_p.sum(dim=-1, dtype=torch.float64)
        else:  # per sample Σ_c p_a u_a − L_a
            self_sum = neg_ent_p.sum(dim=-1, dtype=torch.float64)
        shift_sum = log_total_q.sum(dim=-1, dtype=torch.float64)
        _check_finite_sums(self_sum, shift_sum, product)
        self.self_term += self_sum
        self.shift += shift_sum
        self.cross += product.double()
        self.count += n

    def add_native(self, z_src: torch.Tensor, z_tgt: torch.Tensor | None = None, *, threads: int | None = None,
                   block_bytes: int = 0, isa: str = "auto") -> None:
        """Adds one chunk through the native CPU kernel (csrc/theta_cpu.cpp): z_src ``[Ks, n, C]``,
        z_tgt ``[Kt, n, C]`` CPU logits, or None for Θ of z_src against itself. `threads` defaults to
        torch.get_num_threads(); `block_bytes` and `isa` are the kernel's (tests pin them)."""
        native = _native_module()
        if native is None:
            raise RuntimeError("the native backend needs klas._C; reinstall with `pip install -e .`")
        if z_src.device.type != "cpu" or (z_tgt is not None and z_tgt.device.type != "cpu"):
            raise UsageError("the native backend runs on CPU tensors; use backend='triton' or 'torch' on a GPU")
        # The kernel reads every logit anyway: it checks the range on the way (no torch pass before
        # it, whose idle OpenMP workers would spin beside the kernel's threads) and adds nothing
        # when a logit is out of range, so a refused chunk leaves the sums as they were.
        bound = MAX_SCALED_LOGIT * self.temperature
        top = native.theta_sums(_native_view(z_src), None if z_tgt is None else _native_view(z_tgt),
                                1.0 / self.temperature, self.self_term.numpy(), self.cross.numpy(), self.shift.numpy(),
                                threads or torch.get_num_threads(), block_bytes, isa, bound)
        if not top <= bound:
            check_logit_range(z_src, self.temperature, "logits_src")
            if z_tgt is not None:
                check_logit_range(z_tgt, self.temperature, "logits_tgt")
            raise _beyond_range("the logits", top / self.temperature)  # the kernel's float32 bound, at the edge
        self.count += z_src.shape[1]
        # The net behind the kernel's range check, as in `update`: sums that went non-finite anyway.
        _check_finite_sums(self.self_term, self.shift, self.cross)

    def add_partial(self, self_term: torch.Tensor, cross: torch.Tensor, count: int) -> None:
        """Adds sums computed elsewhere (a kernel, another rank): Σ p_a log p_a and Σ p_a log q_b.
        The fused kernels never form the logits, so only their sums can be checked: UsageError when
        they are not finite."""
        if not (torch.isfinite(self_term).all() and torch.isfinite(cross).all()):
            raise UsageError("the fused kernel's sums are not finite: the features or probe weights hold NaN/Inf or "
                             "give logits too large for float32 at this temperature; check them, or raise the "
                             "temperature")
        self.self_term += self_term.double()
        self.cross += cross.double()
        self.count += count

    def all_reduce(self) -> None:
        """Sums of every rank (torch.distributed; nothing happens in one process)."""
        from klas import distributed as dist

        self.self_term, self.cross, self.shift = (dist.all_reduce_sum(t) for t in (self.self_term, self.cross, self.shift))
        self.count = int(dist.all_reduce_sum(torch.tensor([self.count], dtype=torch.int64))[0])

    def result(self) -> torch.Tensor:
        """Θ ``[Ks, Kt]`` float32."""
        if self.count == 0:
            raise UsageError("no samples were accumulated")
        return ((self.self_term[:, None] - self.cross + self.shift[None, :]) / self.count).float()



def kl_matrix_reference(logits_src: torch.Tensor, logits_tgt: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """The oracle: float64, one F.kl_div per (a, b) pair."""
    check_temperature(temperature)
    _check_logits(logits_src, logits_tgt, temperature=temperature)
    log_p = torch.log_softmax(logits_src.double() / temperature, dim=-1)
    log_q = torch.log_softmax(logits_tgt.double() / temperature, dim=-1)
    n = logits_src.shape[1]
    out = torch.empty(len(log_p), len(log_q), dtype=torch.float64)
    for a in range(len(log_p)):
        for b in range(len(log_q)):
            out[a, b] = F.kl_div(log_q[b], log_p[a], log_target=True, reduction="sum") / n
    return out.float()


def kl_matrix_torch(logits_src: torch.Tensor, logits_tgt: torch.Tensor, *, temperature: float = 1.0,
                    chunk_size: int | None = None) -> torch.Tensor:
    """Vectorised Θ, chunked over samples (the CPU path)."""
    _check_logits(logits_src, logits_tgt)  # values are checked chunk by chunk, where the sums go non-finite
    ks, n, c = logits_src.shape
    chunk = chunk_size or default_chunk(ks + logits_tgt.shape[0], c)
    acc = ThetaAccumulator(ks, logits_tgt.shape[0], temperature=temperature, device=logits_src.device)
    same = logits_tgt is logits_src
    for s in range(0, n, chunk):
        zs = logits_src[:, s:s + chunk]
        acc.update(zs, zs if same else logits_tgt[:, s:s + chunk])
    return acc.result()


def kl_matrix_native(logits_src: torch.Tensor, logits_tgt: torch.Tensor, *, temperature: float = 1.0,
                     threads: int | None = None) -> torch.Tensor:
    """Θ from the fused C++ CPU kernel. float32 logits with contiguous classes are read in place in
    one call (the kernel streams the samples block by block); others are converted chunk by chunk,
    so the converted copy stays near 16 MiB."""
    _check_logits(logits_src, logits_tgt)  # the kernel's sums go non-finite with a bad row: diagnosed then
    (ks, n, c), kt = logits_src.shape, logits_tgt.shape[0]
    same = logits_tgt is logits_src
    acc = ThetaAccumulator(ks, kt, temperature=temperature)
    in_place = _native_reads_in_place(logits_src) and (same or _native_reads_in_place(logits_tgt))
    chunk = n if in_place else default_chunk(ks + kt, c, budget_bytes=16 << 20)
    for s in range(0, n, chunk):
        acc.add_native(logits_src[:, s:s + chunk], None if same else logits_tgt[:, s:s + chunk], threads=threads)
    return acc.result()


def _auto_backend(t: torch.Tensor) -> str:
    """triton for CUDA tensors when Triton is importable, native for CPU tensors when klas._C is
    built, torch otherwise."""
    if t.is_cuda and triton_runs_on(t.device):
        return "triton"
    return "native" if t.device.type == "cpu" and native_available() else "torch"


def check_temperature(temperature) -> float:
    """UsageError unless the softmax temperature lies in [MIN_TEMPERATURE, MAX_TEMPERATURE] (every
    backend; the config and the CLI check the same range, klas.limits)."""
    from klas.reading import finite_number

    return finite_number(temperature, "temperature", error=UsageError, low=MIN_TEMPERATURE, high=MAX_TEMPERATURE)


def _check_backend(backend: str, t: torch.Tensor) -> str:
    """UsageError for an unknown backend, or one that cannot run on `t`'s device."""
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and not triton_runs_on(t.device):
        raise UsageError("the triton backend needs CUDA tensors and an importable Triton (no GPU here?); use "
                         "backend auto, native or torch")
    return backend


def kl_matrix(logits_src: torch.Tensor, logits_tgt: torch.Tensor, *, temperature: float = 1.0,
              backend: str = "auto") -> torch.Tensor:
    """Θ ``[Ks, Kt]`` float32 for logits_src ``[Ks, N, C]`` and logits_tgt ``[Kt, N, C]``.

    Θ[a, b] = mean over the N samples of KL(softmax(src[a]/T) ‖ softmax(tgt[b]/T)).
    Raises UsageError (a ValueError) for bad shapes, mismatched N or C, non-finite logits, or logits
    beyond ``MAX_SCALED_LOGIT`` times the temperature (the same rule for every backend).
    """
    check_temperature(temperature)
    _check_logits(logits_src, logits_tgt)  # values: `check_logit_range`, one rule for every backend (below)
    backend = _check_backend(backend, logits_src)
    if backend == "auto":
        backend = _auto_backend(logits_src)
    if backend == "reference":
        return kl_matrix_reference(logits_src, logits_tgt, temperature=temperature)
    if backend == "triton":
        from klas.kernels.kl_matrix import kl_matrix_triton

        _check_logits(logits_src, logits_tgt, temperature=temperature)  # the torch and native paths: per chunk
        return kl_matrix_triton(logits_src, logits_tgt, temperature=temperature)
    if backend == "native":
        return kl_matrix_native(logits_src, logits_tgt, temperature=temperature)
    return kl_matrix_torch(logits_src, logits_tgt, temperature=temperature)


def probe_logits(features: Sequence[torch.Tensor], probes: Sequence) -> torch.Tensor:
    """Logits ``[K, n, C]`` of K probes on one chunk: features[k] ``[n, d_k]``, probes[k] = (W ``[C, d_k]``,
    b ``[C]``), or None where features[k] already are logits (an anchor's own head)."""
    out = []
    for f, probe in zip(features, probes):
        f = f.float()
        out.append(f if probe is None else torch.addmm(probe[1].float(), f, probe[0].float().T))
    return torch.stack(out)


def _chunks(feats, chunk: int) -> Iterable[list[torch.Tensor]]:
    """Chunks of a feature source: a list of ``[N, d_k]`` tensors, or a `FeatureStream`."""
    if hasattr(feats, "chunks"):
        yield from feats.chunks(chunk)
        return
    n = feats[0].shape[0]
    for s in range(0, n, chunk):
        yield [f[s:s + chunk] for f in feats]


def kl_matrix_from_features(feats_src, probes_src, feats_tgt, probes_tgt, *, temperature: float = 1.0,
                            backend: str = "auto", chunk_size: int | None = None,
                            across_ranks: bool = False) -> torch.Tensor:
    """Θ ``[Ks, Kt]`` straight from pooled block features and probe weights.

    Args:
        feats_src, feats_tgt: a list of ``[N, d_k]`` tensors (one per probe), or a FeatureStream
            (klas.scoring.features.CacheFeatures) over a cache; both over the same N samples in the same order.
        probes_src, probes_tgt: one ``(W [C, d_k], b [C])`` per feature, or None for logits.
        chunk_size: samples per chunk. Peak extra memory is about
            ``chunk * (Ks + Kt) * C * 12`` bytes (logits, log-probabilities, probabilities in fp32)
            plus the chunk's features; by default `default_chunk` keeps the probabilities near 4 MiB.
        across_ranks: the features are this rank's share of the samples (torch.distributed); the
            partial sums of every rank are added before Θ is formed, and every rank gets Θ.

    With the "triton" backend (kernels/fused_probe_kl.py) projection, softmax and KL are fused:
    features and probe weights go in, partial sums come out, and the logits are never written.
    With "native" (the CPU default) each chunk's logits go through the fused C++ kernel.
    """
    if len(probes_src) != _num_features(feats_src) or len(probes_tgt) != _num_features(feats_tgt):
        raise UsageError("one probe per feature block is needed on each side")
    ks, kt = len(probes_src), len(probes_tgt)
    c = _num_classes(probes_src, feats_src)
    if _num_classes(probes_tgt, feats_tgt) != c:
        raise UsageError("source and target probes predict different class counts")
    check_temperature(temperature)
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise UsageError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    chunk = chunk_size or default_chunk(ks + kt, c)
    acc = None
    engine = None
    same = feats_tgt is feats_src  # Θ of a set against itself: read each chunk once
    pairs = ((f, f) for f in _chunks(feats_src, chunk)) if same else zip(_chunks(feats_src, chunk),
                                                                           _chunks(feats_tgt, chunk))
    for fs, ft in pairs:
        if fs[0].shape[0] != ft[0].shape[0]:
            raise UsageError("source and target features cover different sample counts")
        if engine is None:
            engine = _auto_backend(fs[0]) if backend == "auto" else _check_backend(backend, fs[0])
            acc = ThetaAccumulator(ks, kt, temperature=temperature, device=fs[0].device)
            if engine == "triton":
                from klas.kernels.fused_probe_kl import ProbePack, probe_kl_partial

                pack_s = ProbePack(probes_src, [f.shape[1] for f in fs], c, fs[0].device)
                pack_t = pack_s if same and probes_tgt is probes_src else ProbePack(
                    probes_tgt, [f.shape[1] for f in ft], c, fs[0].device)
        if engine == "triton":  # projection, softmax and KL fused: the chunk's logits are never written
            sums = probe_kl_partial(fs, pack_s, None if same else ft, pack_t, temperature=temperature)
            acc.add_partial(*sums, fs[0].shape[0])
            continue
        zs = probe_logits(fs, probes_src)
        zt = None if same and probes_tgt is probes_src else probe_logits(ft, probes_tgt)
        if engine == "native":
            acc.add_native(zs, zt)
        else:
            acc.update(zs, zs if zt is None else zt)
    if across_ranks:
        if acc is None:  # this rank's share is empty; it still takes part in the sum
            acc = ThetaAccumulator(ks, kt, temperature=temperature, device=_probe_device(probes_src))
        acc.all_reduce()
    if acc is None:
        raise UsageError("no samples in the features")
    return acc.result()


def _probe_device(probes) -> torch.device:
    for p in probes:
        if p is not None:
            return p[0].device
    return torch.device("cpu")


def _num_features(feats) -> int:
    return feats.num_blocks if hasattr(feats, "num_blocks") else len(feats)


def _num_classes(probes, feats) -> int:
    for p in probes:
        if p is not None:
            return int(p[0].shape[0])
    if hasattr(feats, "widths"):
        return int(feats.widths[0])
    return int(feats[0].shape[1])
