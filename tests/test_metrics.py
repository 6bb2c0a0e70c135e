"""Similarity metrics on cases whose answer is known."""
from __future__ import annotations

import math

import pytest
import torch

from klas.selection.metrics import cka_distance, cross_entropy, distance_matrix_gap, lstsq_error


def rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.fixture()
def features():
    return torch.randn(400, 12, dtype=torch.float64) @ torch.randn(12, 12, dtype=torch.float64)


def test_identical_features_are_at_distance_zero(features):
    assert cka_distance(features, features) == pytest.approx(0.0, abs=1e-12)
    assert lstsq_error(features, features) == pytest.approx(0.0, abs=1e-12)
    assert distance_matrix_gap(features, features) == pytest.approx(0.0, abs=1e-12)


def test_rotated_and_scaled_copy(features):
    rotated = 3.0 * features @ rotation(12, 1) + 5.0
    assert cka_distance(features, rotated) == pytest.approx(0.0, abs=1e-10)  # CKA 1
    assert lstsq_error(features, rotated) == pytest.approx(0.0, abs=1e-10)  # a linear stitch is exact
    assert distance_matrix_gap(features, rotated) == pytest.approx(0.0, abs=1e-10)  # distances scale together


def test_unrelated_features_are_far(features):
    noise = torch.randn(400, 7, dtype=torch.float64)
    assert cka_distance(features, noise) > 0.8
    assert lstsq_error(features, noise) > 0.9
    assert distance_matrix_gap(features, noise) > 0.1


def test_cross_entropy_of_a_distribution_with_itself_is_its_entropy():
    uniform = torch.zeros(5, 8)
    assert cross_entropy(uniform, uniform) == pytest.approx(math.log(8))
    z = torch.randn(50, 6)
    p = torch.softmax(z.double(), -1)
    assert cross_entropy(z, z) == pytest.approx(float(-(p * p.log()).sum(-1).mean()))
