"""Triton kernels against their PyTorch twins and the float64 oracle (interpreter on the CPU)."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from klas.kernels.kl_matrix import kl_matrix_triton, kl_partial_sums  # noqa: E402
from klas.scoring.kl import ThetaAccumulator, kl_matrix  # noqa: E402

from test_kl import theta_numpy  # noqa: E402

# input dtype -> (atol, rtol) of Θ against the float64 oracle (inputs rounded to the dtype first)
TOL = {torch.float32: (2e-5, 1e-5), torch.float16: (2e-5, 1e-5), torch.bfloat16: (2e-5, 1e-5)}


@pytest.mark.parametrize("ks,kt,n,c", [(7, 5, 1001, 37), (3, 2, 67, 1000), (17, 2, 130, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kl_kernel_matches_oracle(ks, kt, n, c, dtype):
    src = (torch.randn(ks, n, c) * 3).to(dtype)
    tgt = (torch.randn(kt, n, c) * 3).to(dtype)
    got = kl_matrix_triton(src, tgt, num_slices=3)
    want = torch.from_numpy(theta_numpy(src.float().numpy(), tgt.float().numpy())).float()
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_kernel_partial_sums_give_the_torch_twins_theta():
    src, tgt = torch.randn(4, 300, 21) * 2, torch.randn(6, 300, 21) * 2
    from_kernel = ThetaAccumulator(4, 6, temperature=1.5)
    from_kernel.add_partial(*kl_partial_sums(src, tgt, temperature=1.5, num_slices=2), 300)
    twin = ThetaAccumulator(4, 6, temperature=1.5)
    twin.update(src, tgt)
    torch.testing.assert_close(from_kernel.result(), twin.result(), atol=2e-6, rtol=1e-5)


def test_kernel_near_identical_probes_stay_near_zero():
    src = torch.randn(3, 700, 100) * 10
    theta = kl_matrix_triton(src, src + 1e-4 * torch.randn_like(src), num_slices=1)
    assert theta.diagonal().min() >= -1e-5 and theta.diagonal().abs().max() <= 1e-5, theta.diagonal()


def test_slicing_does_not_change_theta():
    src, tgt = torch.randn(2, 250, 13), torch.randn(3, 250, 13)
    torch.testing.assert_close(kl_matrix_triton(src, tgt, num_slices=1), kl_matrix_triton(src, tgt, num_slices=7),
                               atol=1e-6, rtol=1e-6)


def test_backend_triton_through_the_public_api():
    src, tgt = torch.randn(2, 50, 9), torch.randn(2, 50, 9)
    torch.testing.assert_close(kl_matrix(src, tgt, backend="triton"), kl_matrix(src, tgt, backend="reference"),
                               atol=2e-5, rtol=1e-5)


def test_features_path_with_the_triton_backend():
    from klas.scoring.kl import kl_matrix_from_features

    gen = torch.Generator().manual_seed(1)
    fs = [torch.randn(90, 6, generator=gen), torch.randn(90, 11, generator=gen)]
    ps = [(torch.randn(7, 6, generator=gen), torch.randn(7, generator=gen)),
          (torch.randn(7, 11, generator=gen), torch.randn(7, generator=gen))]
    got = kl_matrix_from_features(fs, ps, fs, ps, backend="triton", chunk_size=40)
    torch.testing.assert_close(got, kl_matrix_from_features(fs, ps, fs, ps, backend="torch"), atol=2e-5, rtol=1e-5)


# every shape in both dtypes but the 1000-class one (float32 only: the class count changes the tiling,
# not the loads, and the interpreter takes 14 s per run of it)
@pytest.mark.parametrize("c,widths_s,widths_t,dtype", [
    (c, ws, wt, dt) for c, ws, wt in [(10, (6, 20, 3), (13, 10)), (37, (16, 33), (8,)), (1000, (24,), (17, 5))]
    for dt in (torch.float32, torch.float16) if not (c == 1000 and dt == torch.float16)])
def test_fused_probe_kl_matches_the_torch_twin(c, widths_s, widths_t, dtype):
    """Features + probe weights -> Θ without logits, against probe_logits + the float64 oracle."""
    from klas.scoring.kl import kl_matrix_from_features, probe_logits

    n = 20 if c == 1000 else 301  # the interpreter is slow on the 1000-wide identity probe
    fs = [torch.randn(n, w).to(dtype) for w in widths_s]
    ft = [torch.randn(n, w).to(dtype) for w in widths_t] + [torch.randn(n, c).to(dtype)]
    ps = [(torch.randn(c, w) * 0.4, torch.randn(c)) for w in widths_s]
    pt = [(torch.randn(c, w) * 0.4, torch.randn(c)) for w in widths_t] + [None]
    got = kl_matrix_from_features(fs, ps, ft, pt, backend="triton", chunk_size=64)
    zs, zt = probe_logits(fs, ps), probe_logits(ft, pt)
    want = torch.from_numpy(theta_numpy(zs.numpy(), zt.numpy())).float()
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_fused_probe_kl_of_a_set_against_itself_has_zero_diagonal():
    from klas.scoring.kl import kl_matrix_from_features

    fs = [torch.randn(150, w) for w in (7, 12)] + [torch.randn(150, 9)]
    ps = [(torch.randn(9, 7), torch.randn(9)), (torch.randn(9, 12), torch.randn(9)), None]
    theta = kl_matrix_from_features(fs, ps, fs, ps, backend="triton")
    assert theta.diagonal().abs().max() < 1e-5 and theta.min() > -1e-5
    torch.testing.assert_close(theta, kl_matrix_from_features(fs, ps, fs, ps, backend="torch"), atol=2e-5, rtol=1e-5)


def test_fused_probe_kl_rejects_bad_input():
    from klas.scoring.kl import kl_matrix_from_features

    fs = [torch.randn(20, 4)]
    fs[0][3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        kl_matrix_from_features(fs, [(torch.randn(5, 4), torch.randn(5))], fs, [(torch.randn(5, 4), torch.randn(5))],
                                backend="triton")
    with pytest.raises(ValueError, match="does not match"):
        kl_matrix_from_features([torch.randn(20, 4)], [(torch.randn(5, 3), torch.randn(5))],
                                [torch.randn(20, 4)], [(torch.randn(5, 4), torch.randn(5))], backend="triton")


@pytest.mark.parametrize("b,n,c,w,smoothing", [(37, 3, 10, 24, 0.0), (20, 2, 37, 70, 0.1), (9, 1, 1000, 16, 0.0)])
def test_fused_linear_cross_entropy_matches_the_torch_twin(b, n, c, w, smoothing):
    from klas.kernels.fused_linear_ce import linear_cross_entropy
    from klas.scoring.probes import probe_losses

    x = torch.randn(b, n, w)
    weight = (torch.randn(n, c, w) * 0.3).requires_grad_()
    bias = torch.randn(n, c).requires_grad_()
    y = torch.randint(0, c, (b, n))
    fused = linear_cross_entropy(x, weight, bias, y, smoothing)
    (2.0 * fused).backward()  # a scaled upstream gradient must scale dW and db
    grads = weight.grad.clone(), bias.grad.clone()
    weight.grad = bias.grad = None
    twin = probe_losses(torch.einsum("bnw,ncw->bnc", x, weight) + bias, y, smoothing)
    (2.0 * twin).backward()
    torch.testing.assert_close(fused, twin, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], weight.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[1], bias.grad, atol=1e-6, rtol=1e-5)


def test_probe_training_with_the_fused_loss_equals_torch(tmp_path):
    from helpers import feature_cache
    from klas.scoring.probes import train_probes

    for name, widths, seed in (("a", (4, 8, 4), 1), ("b", (6, 6), 2)):
        feature_cache(tmp_path / name / "train", 200, widths, 5, seed=seed)
    paths = [tmp_path / "a" / "train", tmp_path / "b" / "train"]
    kw = dict(epochs=1, batch_size=64, progress=False, evaluate=False)
    fused = train_probes(paths, backend="triton", **kw)
    plain = train_probes(paths, backend="torch", **kw)
    for f, p in zip(fused, plain):
        for wf, wp in zip(f.weights, p.weights):
            torch.testing.assert_close(wf, wp, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("call, message", [
    (lambda: kl_partial_sums(torch.randn(2, 5, 3), torch.randn(2, 6, 3)), "differ in samples or classes"),
    (lambda: kl_partial_sums(torch.randn(5, 3), torch.randn(2, 5, 3)), "must have 3 dimensions"),
    (lambda: kl_partial_sums(torch.randint(0, 3, (2, 5, 3)), torch.randn(2, 5, 3)), "dtype torch.int64"),
])
def test_launchers_check_their_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_fused_loss_checks_its_shapes():
    from klas.kernels.fused_linear_ce import linear_cross_entropy

    x, w, b = torch.randn(4, 3, 8), torch.randn(3, 5, 8), torch.randn(3, 5)
    with pytest.raises(ValueError, match="do not fit"):
        linear_cross_entropy(x, w, b, torch.zeros(4, 2, dtype=torch.long))
