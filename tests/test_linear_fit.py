"""Least-squares stitches (klas.stitches.fit_linear) and Θ through them (the kl-ls baseline)."""
from __future__ import annotations

import pytest
import torch

from klas.scoring.kl import kl_matrix_reference
from klas.stitches import fit_linear
from klas.selection.metric_tables import kl_through_stitch


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_an_exact_affine_map_is_recovered():
    a = torch.randn(300, 7, generator=gen(0))
    w, b = torch.randn(5, 7, generator=gen(1)), torch.randn(5, generator=gen(2))
    fw, fb = fit_linear(a, a @ w.T + b, ridge=0.0)
    torch.testing.assert_close(fw, w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fb, b, atol=1e-5, rtol=1e-5)


def test_targets_side_by_side_equal_separate_fits():
    a = torch.randn(200, 6, generator=gen(3))
    b1, b2 = torch.randn(200, 4, generator=gen(4)), torch.randn(200, 9, generator=gen(5))
    w, b = fit_linear(a, torch.cat([b1, b2], dim=1))
    w1, c1 = fit_linear(a, b1)
    w2, c2 = fit_linear(a, b2)
    torch.testing.assert_close(w, torch.cat([w1, w2]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(b, torch.cat([c1, c2]), atol=1e-6, rtol=1e-6)


def test_dead_channels_and_few_samples_stay_finite():
    a = torch.randn(5, 12, generator=gen(6))
    a[:, 3] = 0.0  # a dead channel, and fewer samples than channels
    w, b = fit_linear(a, torch.randn(5, 4, generator=gen(7)))
    assert torch.isfinite(w).all() and torch.isfinite(b).all()


@pytest.mark.parametrize("bad", ["shape", "nan"])
def test_bad_input_is_refused(bad):
    a = torch.randn(10, 3)
    with pytest.raises(ValueError, match="same rows" if bad == "shape" else "non-finite"):
        if bad == "shape":
            fit_linear(a, torch.randn(9, 2))
        else:
            fit_linear(a, torch.full((10, 2), float("nan")))


def test_theta_through_stitch_matches_a_direct_computation():
    """Each pair fitted on its own with float64 lstsq, logits materialised, KL by the float64 oracle."""
    c = 6
    fit_src = [torch.randn(400, d, generator=gen(10 + d)) for d in (5, 8)]
    fit_tgt = [torch.randn(400, d, generator=gen(20 + d)) + 0.5 * fit_src[0][:, :1] for d in (4, 7, 3)]
    val_src = [torch.randn(150, d, generator=gen(30 + d)) for d in (5, 8)]
    val_tgt = [torch.randn(150, d, generator=gen(40 + d)) for d in (4, 7, 3)]
    probes = [(torch.randn(c, d, generator=gen(50 + d)), torch.randn(c, generator=gen(60 + d))) for d in (4, 7, 3)]
    pairs = [(0, 0), (0, 2), (1, 1), (1, 2)]
    got = kl_through_stitch(fit_src, fit_tgt, val_src, val_tgt, probes, pairs, backend="torch")
    for k, (i, j) in enumerate(pairs):
        a = torch.cat([fit_src[i].double(), torch.ones(400, 1, dtype=torch.float64)], dim=1)
        sol = torch.linalg.lstsq(a, fit_tgt[j].double()).solution  # [d_f + 1, d_g]
        stitched = torch.cat([val_src[i].double(), torch.ones(150, 1, dtype=torch.float64)], dim=1) @ sol
        w, b = (t.double() for t in probes[j])
        z_src, z_tgt = stitched @ w.T + b, val_tgt[j].double() @ w.T + b
        want = kl_matrix_reference(z_src[None], z_tgt[None])[0, 0]
        assert float(got[k]) == pytest.approx(float(want), rel=1e-4, abs=1e-5)


def test_theta_through_an_exact_stitch_is_zero():
    """Target features an affine image of the source's: the stitch reproduces them, Θ = 0."""
    src = torch.randn(500, 6, generator=gen(70))
    m, t = torch.randn(6, 4, generator=gen(71)), torch.randn(4, generator=gen(72))
    tgt = src @ m + t
    probe = (torch.randn(5, 4, generator=gen(73)), torch.randn(5, generator=gen(74)))
    theta = kl_through_stitch([src[:300]], [tgt[:300]], [src[300:]], [tgt[300:]], [probe], [(0, 0)], backend="torch")
    assert abs(float(theta[0])) < 1e-5
