"""Θ: the chunked torch path and the features path against an independent float64 oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from klas.cache import CacheReader
from klas.features import CacheFeatures
from klas.kl import kl_matrix, kl_matrix_from_features, kl_matrix_torch

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
@pytest.mark.parametrize("backend", ["torch", "reference"])
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


@pytest.mark.parametrize("scale", [1.0, 10.0, 40.0])
def test_near_identical_probes_give_theta_near_zero(scale):
    src = torch.randn(6, 5000, 100) * scale
    tgt = src + 1e-4 * torch.randn_like(src)
    theta = kl_matrix(src, tgt)
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
def test_any_non_finite_logit_is_named_by_the_torch_path(value, where):
    good, bad = torch.randn(3, 40, 7), torch.randn(3, 40, 7)
    bad[2, 17, 4] = value
    src, tgt = {"same": (bad, bad), "src": (bad, good), "tgt": (good, bad)}[where]
    name = "logits_tgt" if where == "tgt" else "logits_src"
    with pytest.raises(ValueError, match=f"{name} holds NaN or Inf"):
        kl_matrix_torch(src, tgt, chunk_size=16)


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
    got = kl_matrix_from_features(fs, ps, ft, pt, chunk_size=100)
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
