"""Curve measures on hand-made points, and the report files."""
from __future__ import annotations

import json
import math

import pytest

from klas.evaluation.evaluate import (
    RouteResult,
    accuracy_gain_at_equal_flops,
    flops_saving_at_equal_accuracy,
    frontier_auc,
    pareto_frontier,
    spearman,
)
from klas.evaluation.report import write_report


def test_pareto_frontier_keeps_only_unbeaten_points():
    points = [(10, 70.0), (20, 65.0), (15, 72.0), (30, 80.0), (30, 75.0), (25, 80.0)]
    assert pareto_frontier(points) == [0, 2, 5]
    # an exact twin of a frontier point is on it too; an equal accuracy at higher FLOPs is not
    assert pareto_frontier([(10, 70.0), (10, 70.0), (12, 70.0), (10, 69.0)]) == [0, 1]


def test_auc_of_a_step_curve():
    # 70 on [0, 0.5), 80 on [0.5, 1]: area 75
    assert frontier_auc([(0, 70.0), (50, 80.0), (100, 79.0)], (0, 100)) == pytest.approx(75.0)
    # a flat curve at 60 anywhere in range has area 60; points outside the range are clipped
    assert frontier_auc([(-5, 60.0), (150, 99.0)], (0, 100)) == pytest.approx(60.0)
    with pytest.raises(ValueError):
        frontier_auc([(0, 1.0)], (5, 5))


def test_gain_and_saving_between_two_curves():
    ours = [(10, 70.0), (40, 78.0), (100, 80.0)]
    theirs = [(10, 70.0), (60, 78.0), (100, 80.0)]
    gain, at = accuracy_gain_at_equal_flops(ours, theirs, (0, 100))
    assert gain == pytest.approx(8.0) and at == 40
    ratio, acc = flops_saving_at_equal_accuracy(ours, theirs)
    assert ratio == pytest.approx(1.5) and acc == 78.0


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [5, 5, 6, 7]) == pytest.approx(1.0)  # ties get average ranks
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def _route(name, src, tgt, flops, top1, gamma=None):
    return RouteResult(name, src, tgt, 1, 1, flops, 1000, top1, int(top1 * 10), 1000, gamma)


def test_report_files(tmp_path):
    anchors = [_route("a", "a", "a", 100, 70.0), _route("b", "b", "b", 200, 80.0)]
    klas = anchors + [_route("a:1->b:2", "a", "b", 150, 78.0, 0.5), _route("a:2->b:1", "a", "b", 170, 74.0, 0.9)]
    snnet = anchors + [_route("a:3->b:3", "a", "b", 150, 72.0, 0.7)]
    write_report({"klas": klas, "snnet-nearest": snnet}, tmp_path, title="test")
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["methods"]["klas"]["auc"] == pytest.approx(0.5 * 70 + 0.5 * 78)
    assert doc["methods"]["snnet-nearest"]["auc"] == pytest.approx(0.5 * 70 + 0.5 * 72)
    assert doc["comparisons"][0]["delta_auc"] == pytest.approx(3.0)
    assert doc["comparisons"][0]["best_gain_at_equal_flops"]["top1_points"] == pytest.approx(6.0)
    assert doc["methods"]["klas"]["spearman_gamma_top1"] == pytest.approx(-1.0)  # lower Γ, higher top-1
    assert doc["methods"]["klas"]["frontier"] == ["a", "a:1->b:2", "b"]
    rows = (tmp_path / "routes.csv").read_text().splitlines()
    assert len(rows) == 1 + len(klas) + len(snnet)
    assert (tmp_path / "accuracy_flops.png").stat().st_size > 5000
    assert doc["comparisons"][0]["shared_stitches"] == {"count": 0, "mean_difference": None, "min_difference": None,
                                                        "max_difference": None}


def test_shared_stitches_compare_the_same_configuration_in_two_supernets():
    from klas.evaluation.report import shared_stitches

    anchors = [_route("a", "a", "a", 100, 70.0), _route("b", "b", "b", 200, 80.0)]
    ours = [_route("a", "a", "a", 100, 71.0), anchors[1], _route("a:1->b:2", "a", "b", 150, 78.0),
            _route("a:2->b:3", "a", "b", 160, 74.5), _route("a:4->b:1", "a", "b", 170, 60.0)]
    theirs = anchors + [_route("a:1->b:2", "a", "b", 150, 79.0), _route("a:2->b:3", "a", "b", 160, 74.0),
                        _route("a:3->b:3", "a", "b", 165, 90.0)]
    # the anchors (71 against 70) and the stitches only one side holds do not count
    assert shared_stitches(ours, theirs) == {"count": 2, "mean_difference": pytest.approx(-0.25),
                                             "min_difference": pytest.approx(-1.0), "max_difference": pytest.approx(0.5)}


def test_steps_per_route_counts_only_the_routes_that_train():
    from klas.evaluation.report import summarise

    anchors = [_route("a", "a", "a", 100, 70.0), _route("b", "b", "b", 200, 80.0)]
    stitched = anchors + [_route("a:1->b:2", "a", "b", 150, 78.0)]
    assert summarise(stitched, (100, 200), steps=900)["steps_per_route"] == pytest.approx(300.0)
    assert summarise(stitched, (100, 200), steps=900, stitches_only=True)["steps_per_route"] == pytest.approx(900.0)
    # no stitch with the anchors frozen: no route trains
    assert summarise(anchors, (100, 200), steps=900, stitches_only=True)["steps_per_route"] == 0.0
    assert summarise(anchors, (100, 200), steps=900)["steps_per_route"] == pytest.approx(450.0)
    assert summarise(anchors, (100, 200))["steps_per_route"] is None
