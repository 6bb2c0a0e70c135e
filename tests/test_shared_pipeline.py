"""The shared CIFAR-10 ResNet family end to end: extract -> probes -> score (slow, needs shared data)."""
from __future__ import annotations

import time

import pytest
import torch

from klas.pipeline.cli import main
from klas.scoring.probes import load_probes
from klas.scoring.scores import load_scores
from klas.settings import cifar10_dir

from conftest import requires_shared

DEPTHS = (20, 32, 56)  # three depths: three pairs, two of them across a skipped depth
ANCHORS = [f"cifar-resnet:{d}" for d in DEPTHS]


@pytest.mark.slow
@requires_shared
def test_probes_reach_the_heads_and_scores_are_consistent(tmp_path, capsys):
    # 5,000 images of D_t (a seeded draw over all classes) and all 5,000 of D_v
    argv = ["extract", "--data", str(cifar10_dir()), "--out", str(tmp_path), "--limit", "5000",
            "--batch-size", "256", "--quiet"]
    for spec in ANCHORS:
        argv += ["--anchor", spec]
    assert main(argv) == 0
    start = time.perf_counter()
    assert main(["probes", "--cache", str(tmp_path), "--quiet"]) == 0
    assert main(["score", "--cache", str(tmp_path)]) == 0
    print(f"probes + score on {len(DEPTHS)} anchors: {time.perf_counter() - start:.1f} s")  # reported, not asserted
    out = capsys.readouterr().out
    assert "best stitch per anchor pair" in out

    for depth in DEPTHS:
        ps = load_probes(tmp_path / "probes", f"cifar-resnet{depth}")
        assert len(ps.val_acc) == (depth - 2) // 2
        # the head is a linear probe on the last block: a working trainer gets within 2 points
        assert ps.val_acc[-1] >= ps.head_val_acc - 2.0, (depth, ps.val_acc[-1], ps.head_val_acc)
        assert ps.val_acc[0] < ps.val_acc[-1]  # early blocks are less linearly separable

    scores = load_scores(tmp_path / "scores")
    assert [a.name for a in scores.anchors] == [f"cifar-resnet{d}" for d in DEPTHS]
    assert len(scores.pairs()) == 3
    for f, g in scores.pairs():
        theta, sigma = scores.theta(f, g), scores.sigma(g)
        torch.testing.assert_close(scores.gamma(f, g), theta[:-1, :-1] / sigma.clamp_min(scores.floor))
        assert theta.min() > -1e-5
    assert scores.last_block().diagonal().abs().max() < 1e-5
