"""`klas demo` end to end on a fresh folder (slow: about 3 minutes on 2 cores)."""
from __future__ import annotations

import json

import pytest

from klas.pipeline.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "demo" / "run" / "report" / "snnet"
    assert f"open {report / 'accuracy_flops.png'}" in out
    doc = json.loads((report / "report.json").read_text())
    assert list(doc["methods"]) == ["klas", "snnet-nearest"]
    for method, routes in doc["results"].items():
        anchors = [r for r in routes if r["source"] == r["target"]]
        names = [a["name"] for a in anchors]  # KLAS's supernet holds the anchors of its chain only
        assert names == (["cifar-resnet8", "cifar-resnet14", "cifar-resnet20"] if method == "snnet-nearest"
                         else [n for n in ["cifar-resnet8", "cifar-resnet14", "cifar-resnet20"] if n in names])
        assert names[0] == "cifar-resnet8" and names[-1] == "cifar-resnet20"
        assert all(a["top1"] > 70 for a in anchors), anchors  # trained anchors, far above chance (10%)
        assert doc["methods"][method]["stitches"] >= 5
    assert (report / "accuracy_flops.png").stat().st_size > 10_000
    assert (report / "routes.csv").read_text().count("\n") == 1 + sum(len(r) for r in doc["results"].values())
