"""Θ: the chunked torch path and the features path against an independent float64 oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from klas.cache import CacheReader
from klas.scoring.features import CacheFeatures
from klas.scoring.kl import ThetaAccumulator, kl_matrix, kl_matrix_from_features, kl_matrix_torch, native_available

from helpers import feature_cache


def theta_numpy(src, tgt, temperature=1.0):
    """Independent float64 oracle: explicit softmax and the KL sum, pair by pair."""
    s = src.astype(np.float64) / temperature
    t = tgt.astype(np.float64) / temperature
    ls = s - s.max(-1, keepdims=True)
    ls -= np.log(np.exp(ls).sum(-1, keepdims=True))
    lt = t - t.max(-1, keepdims=True)
    lt -= np.log(np.exp(lt).sum(-1, keepdims=True))
    out = np.empty((len(s), len(t)))
    for a in range(len(s)):
        for b in range(len(t)):
            out[a, b] = (np.exp(ls[a]) * (ls[a] - lt[b])).sum(-1).mean()
    return out


# dtype -> (atol, rtol) against the float64 oracle
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-4, 1e-4), torch.bfloat16: (1e-4, 1e-4)}


@pytest.mark.parametrize("ks,kt,n,c", [(7, 5, 1001, 37), (3, 4, 513, 10), (2, 3, 97, 1000), (1, 1, 1, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["torch", "native", "reference"])
def test_kl_matrix_matches_float64_oracle(ks, kt, n, c, dtype, backend):
    src = (torch.randn(ks, n, c) * 3).to(dtype)
    tgt = (torch.randn(kt, n, c) * 3).to(dtype)
    got = kl_matrix(src, tgt, backend=backend)
    assert got.shape == (ks, kt) and got.dtype == torch.float32
    want = torch.from_numpy(theta_numpy(src.float().numpy(), tgt.float().numpy())).float()
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_small_chunks_give_the_same_theta():
    src, tgt = torch.randn(4, 777, 13), torch.randn(6, 777, 13)
    torch.testing.assert_close(kl_matrix_torch(src, tgt, chunk_size=50), kl_matrix_torch(src, tgt), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 2.0, 7.0])
def test_temperature(temperature):
    src, tgt = torch.randn(3, 200, 11) * 4, torch.randn(2, 200, 11) * 4
    want = theta_numpy(src.numpy(), tgt.numpy(), temperature)
    torch.testing.assert_close(kl_matrix(src, tgt, temperature=temperature), torch.from_numpy(want).float(),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("scale", [1.0, 10.0, 40.0])
def test_near_identical_probes_give_theta_near_zero(scale, backend):
    src = torch.randn(6, 5000, 100) * scale
    tgt = src + 1e-4 * torch.randn_like(src)
    theta = kl_matrix(src, tgt, backend=backend)
    diag = theta.diagonal()
    assert diag.min() >= -1e-5, diag
    assert diag.abs().max() <= 1e-5, diag
    off = theta[~torch.eye(6, dtype=torch.bool)]
    assert off.min() > 0.01  # different probes stay clearly apart


def test_properties_nonnegative_and_zero_diagonal():
    x = torch.randn(5, 300, 20) * 2
    theta = kl_matrix(x, x)
    assert theta.diagonal().abs().max() < 1e-5
    assert theta.min() > -1e-5
    assert not torch.allclose(theta, theta.T, atol=1e-3)  # KL is asymmetric


@pytest.mark.parametrize("src_shape,tgt_shape,message", [
    ((3, 10, 5), (3, 11, 5), "sample counts differ"),
    ((3, 10, 5), (3, 10, 6), "class counts differ"),
    ((10, 5), (3, 10, 5), "must be a tensor"),
    ((0, 10, 5), (3, 10, 5), "empty"),
])
def test_bad_shapes(src_shape, tgt_shape, message):
    with pytest.raises(ValueError, match=message):
        kl_matrix(torch.randn(src_shape), torch.randn(tgt_shape))


def test_non_finite_logits_and_unknown_backend():
    bad = torch.randn(2, 10, 5)
    bad[1, 3, 2] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        kl_matrix(bad, torch.randn(2, 10, 5))
    with pytest.raises(ValueError, match="backend"):
        kl_matrix(torch.randn(2, 10, 5), torch.randn(2, 10, 5), backend="cuda")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["same", "src", "tgt"])
@pytest.mark.parametrize("backend", ["torch", "native"])
def test_any_non_finite_logit_is_named(value, where, backend):
    good, bad = torch.randn(3, 40, 7), torch.randn(3, 40, 7)
    bad[2, 17, 4] = value
    src, tgt = {"same": (bad, bad), "src": (bad, good), "tgt": (good, bad)}[where]
    name = "logits_tgt" if where == "tgt" else "logits_src"
    with pytest.raises(ValueError, match=f"{name} holds NaN or Inf"):
        if backend == "torch":
            kl_matrix_torch(src, tgt, chunk_size=16)
        else:
            kl_matrix(src, tgt, backend="native")


native = pytest.mark.skipif(not native_available(), reason="klas._C is not built")


def _isas():
    from klas import _C

    return _C.THETA_ISAS


@native
@pytest.mark.parametrize("ks,kt,n,c", [(7, 5, 1001, 37), (3, 4, 513, 10), (2, 3, 97, 1000), (5, 1, 3, 8), (1, 2, 2, 1),
                                        (4, 3, 301, 32), (3, 2, 150, 33)])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_native_kernel_on_every_instruction_set(ks, kt, n, c, temperature):
    """Every code path the CPU has (baseline, AVX2, AVX-512), blocks of one sample and of many,
    one thread and more threads than blocks, against the float64 oracle and each other; rows of
    C <= 32 classes take the per-sample-lane statistics (sample counts not a multiple of a vector,
    C = 32 the largest), C = 33 and more the per-row ones."""
    gen = torch.Generator().manual_seed(ks * 1000 + n)
    src, tgt = torch.randn(ks, n, c, generator=gen) * 3, torch.randn(kt, n, c, generator=gen) * 3
    want = torch.from_numpy(theta_numpy(src.numpy(), tgt.numpy(), temperature)).float()
    want_self = torch.from_numpy(theta_numpy(src.numpy(), src.numpy(), temperature)).float()
    results = []
    for isa in _isas():
        for threads, block_bytes in ((1, 0), (3, 1), (8, 4 * c * (ks + kt) * 2)):
            for z_tgt, expected in ((tgt, want), (None, want_self)):
                acc = ThetaAccumulator(ks, kt if z_tgt is not None else ks, temperature=temperature)
                acc.add_native(src, z_tgt, threads=threads, block_bytes=block_bytes, isa=isa)
                got = acc.result()
                torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=f"{isa} {threads} {block_bytes}")
                if z_tgt is None:
                    assert got.diagonal().abs().max() <= 1e-5
                results.append(got)
    for first in (0, 1):  # every path agrees with every other to rounding, on Θ(src, tgt) and Θ(src, src)
        for r in results[first::2]:
            torch.testing.assert_close(r, results[first], atol=2e-6, rtol=1e-5)


@native
@pytest.mark.parametrize("c", [10, 300])
def test_native_kernel_checks_the_logit_range_and_refuses_without_adding(c):
    """The kernel returns the largest |logit| it read (inf for NaN or ±Inf) and adds nothing beyond
    `max_abs_logit`; ThetaAccumulator then names the cause, and its sums stay those of the chunks
    before."""
    from klas import _C

    gen = torch.Generator().manual_seed(c)
    z = torch.randn(3, 101, c, generator=gen) * 4
    sums = (np.zeros(3), np.zeros((3, 3)), np.zeros(3))
    top = _C.theta_sums(z.numpy(), None, 1.0, *sums, 2, 0, "auto", float(z.abs().max()))
    assert top == float(z.abs().max())
    assert np.abs(sums[1]).sum() > 0
    refused = tuple(a.copy() for a in sums)
    assert _C.theta_sums(z.numpy(), None, 1.0, *refused, 2, 0, "auto", top * 0.99) == top
    for got, before in zip(refused, sums):
        np.testing.assert_array_equal(got, before)
    bad = z.clone()
    bad[1, 57, c // 2] = math.nan
    assert _C.theta_sums(bad.numpy(), None, 1.0, *refused, 2, 0, "auto", 1e30) == math.inf
    for got, before in zip(refused, sums):
        np.testing.assert_array_equal(got, before)
    with pytest.raises(ValueError, match="max_abs_logit"):
        _C.theta_sums(z.numpy(), None, 1.0, *refused, 2, 0, "auto", math.nan)

    acc = ThetaAccumulator(3, 3)
    acc.add_native(z[:, :50], z[:, :50].clone())
    kept = (acc.self_term.clone(), acc.cross.clone(), acc.shift.clone(), acc.count)
    for value, message in ((math.inf, "logits_tgt holds NaN or Inf"), (2e6, "logits_tgt reach")):
        tgt = z[:, 50:].clone()
        tgt[2, 7, 0] = value
        with pytest.raises(ValueError, match=message):
            acc.add_native(z[:, 50:], tgt)
        torch.testing.assert_close((acc.self_term, acc.cross, acc.shift), kept[:3], atol=0, rtol=0)
        assert acc.count == kept[3]
    acc.add_native(z[:, 50:], z[:, 50:].clone())
    torch.testing.assert_close(acc.result(), kl_matrix(z, z.clone(), backend="reference"), atol=1e-5, rtol=1e-5)


@native
def test_native_kernel_reads_strided_logits_and_adds_chunks():
    """Sample and probe strides of any size (a [N, K, C] tensor seen as [K, N, C]), and chunks
    added one by one, give the Θ of the whole contiguous tensor."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(301, 6, 23, generator=gen) * 2  # [N, K, C]
    src = base.permute(1, 0, 2)  # [K, N, C], stride_k = C, stride_n = K·C
    tgt = (torch.randn(301, 4, 23, generator=gen) * 2).permute(1, 0, 2)
    want = kl_matrix(src.contiguous(), tgt.contiguous(), backend="reference")
    acc = ThetaAccumulator(6, 4)
    for s in range(0, 301, 77):
        acc.add_native(src[:, s:s + 77], tgt[:, s:s + 77])
    torch.testing.assert_close(acc.result(), want, atol=1e-5, rtol=1e-5)
    every_other = kl_matrix(src[:, ::2], tgt[:, ::2], backend="native")
    torch.testing.assert_close(every_other, kl_matrix(src[:, ::2].contiguous(), tgt[:, ::2].contiguous(),
                                                      backend="reference"), atol=1e-5, rtol=1e-5)


@native
def test_native_backend_converts_other_dtypes_chunk_by_chunk():
    """fp16 logits (converted to float32 in chunks of about 16 MiB: five here) give the float64 Θ."""
    gen = torch.Generator().manual_seed(11)
    src = (torch.randn(2, 9000, 500, generator=gen) * 3).half()
    tgt = (torch.randn(2, 9000, 500, generator=gen) * 3).half()
    for a, b in ((src, tgt), (src, src)):
        want = kl_matrix(a, b, backend="reference")
        torch.testing.assert_close(kl_matrix(a, b, backend="native"), want, atol=1e-4, rtol=1e-4)


@native
def test_native_kernel_refuses_bad_arguments():
    from klas import _C

    z = np.zeros((2, 3, 4), dtype=np.float32)
    sums = (np.zeros(2), np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="float32"):
        _C.theta_sums(z.astype(np.float64), None, 1.0, *sums)
    with pytest.raises(ValueError, match="contiguous along classes"):
        _C.theta_sums(z.transpose(0, 2, 1).copy().transpose(0, 2, 1), None, 1.0, *sums)
    with pytest.raises(ValueError, match="same N and C"):
        _C.theta_sums(z, np.zeros((2, 4, 4), dtype=np.float32), 1.0, *sums)
    with pytest.raises(ValueError, match="cross must be a writable"):
        _C.theta_sums(z, None, 1.0, sums[0], np.zeros(3), sums[2])
    with pytest.raises(ValueError, match="isa must be"):
        _C.theta_sums(z, None, 1.0, *sums, isa="sse")
    with pytest.raises(ValueError, match="inv_temperature"):
        _C.theta_sums(z, None, 0.0, *sums)
    with pytest.raises(ValueError, match="CPU tensors"):
        ThetaAccumulator(2, 2).add_native(torch.zeros(2, 3, 4, device="meta"))


def _random_probes(widths, c, gen):
    return [(torch.randn(c, w, generator=gen) * 0.3, torch.randn(c, generator=gen)) for w in widths]


def test_from_features_equals_kl_of_explicit_logits():
    gen = torch.Generator().manual_seed(0)
    n, c = 1203, 17
    fs = [torch.randn(n, w, generator=gen) for w in (8, 8, 24)]
    ft = [torch.randn(n, w, generator=gen) for w in (5, 40)] + [torch.randn(n, c, generator=gen)]
    ps = _random_probes((8, 8, 24), c, gen)
    pt = _random_probes((5, 40), c, gen) + [None]  # the last target block is already logits
    zs = torch.stack([f @ w.T + b for f, (w, b) in zip(fs, ps)])
    zt = torch.stack([f @ w.T + b for f, (w, b) in zip(ft[:2], pt[:2])] + [ft[2]])
    want = torch.from_numpy(theta_numpy(zs.numpy(), zt.numpy())).float()
    for backend in ("torch", "native", "auto"):
        got = kl_matrix_from_features(fs, ps, ft, pt, chunk_size=100, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_from_features_streams_a_cache(tmp_path):
    rows_s, _ = feature_cache(tmp_path / "s", 700, (6, 10), 5, seed=1)
    rows_t, _ = feature_cache(tmp_path / "t", 700, (7,), 5, seed=2)
    gen = torch.Generator().manual_seed(3)
    ps, pt = _random_probes((6, 10), 5, gen) + [None], _random_probes((7,), 5, gen) + [None]
    src = CacheFeatures(CacheReader(tmp_path / "s"))
    tgt = CacheFeatures(CacheReader(tmp_path / "t"))
    got = kl_matrix_from_features(src, ps, tgt, pt, chunk_size=64)
    rs, rt = torch.from_numpy(rows_s), torch.from_numpy(rows_t)
    fs = [rs[:, 0:6], rs[:, 6:16], rs[:, 16:21]]
    ft = [rt[:, 0:7], rt[:, 7:12]]
    torch.testing.assert_close(got, kl_matrix_from_features(fs, ps, ft, pt), atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_compiled_cpu_path_matches_oracle(monkeypatch):
    monkeypatch.setenv("KLAS_TORCH_COMPILE", "1")
    src, tgt = torch.randn(5, 301, 37) * 3, torch.randn(4, 301, 37) * 3
    want = torch.from_numpy(theta_numpy(src.numpy(), tgt.numpy())).float()
    torch.testing.assert_close(kl_matrix(src, tgt, backend="torch"), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kl_matrix(src, src, backend="torch").diagonal(), torch.zeros(5), atol=1e-5, rtol=0)


def test_cache_features_take_blocks_from_the_end_and_the_logits_by_name(tmp_path):
    from klas.anchors.base import LOGITS

    rows, _ = feature_cache(tmp_path / "s", 40, (3, 4, 5), 7, seed=1)
    reader = CacheReader(tmp_path / "s")
    every = next(CacheFeatures(reader).chunks(40))
    picked = next(CacheFeatures(reader, [-1, LOGITS, 1]).chunks(40))
    assert [t.shape[1] for t in every] == [3, 4, 5, 7]
    torch.testing.assert_close(torch.cat(every, dim=1), torch.from_numpy(rows))
    assert torch.equal(picked[0], every[2]) and torch.equal(picked[1], every[3]) and torch.equal(picked[2], every[0])
    with pytest.raises(IndexError, match="blocks 1..3"):
        CacheFeatures(reader, [0])
