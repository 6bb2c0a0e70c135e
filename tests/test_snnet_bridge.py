"""The SN-Net bridge: a selection as the configuration list SN-Net's SNNet builds, read back, and
SN-Net's own config files read for their anchors.

The expected lists below are written out from the facts of SN-Net's generators (DeiT: every pair of
consecutive anchors, configurations of |a − b| <= 1 in sliding windows of 2 blocks, one stitching
layer per window that adds a configuration; ResNet/Swin: stages 1 and 2 of 4, stage-local indices,
nearest-neighbour interpolation of the front's blocks for unequal depths, the k-th configuration of
a stage on layer e_k), not from its code.
"""
from __future__ import annotations

import json

import pytest
import yaml

from klas.anchors.base import PartCounts
from klas.errors import UsageError
from klas.scoring.scores import AnchorEntry, Scores
from klas.selection.select import select_snnet_nearest
from klas.selection.snnet_bridge import (from_snnet_configs, snnet_config_anchors, snnet_stage_configs,
                                         to_snnet_configs)


def _scores(anchors: list[tuple[str, list[int], int]]) -> Scores:
    """Anchors (spec, blocks per stage, width): stage s on a (56 / 2^s)² grid, FLOPs growing with width."""
    import torch

    entries, offset = [], 0
    for spec, stages, width in anchors:
        grids = [[56 >> s, 56 >> s] for s, n in enumerate(stages) for _ in range(n)]
        widths = [width << s for s, n in enumerate(stages) for _ in range(n)]
        blocks = tuple(w * g[0] * g[1] for w, g in zip(widths, grids))
        depth = len(grids)
        entries.append(AnchorEntry(name=spec.split(":")[-1], spec=spec, depth=depth,
                                   flops=PartCounts(width * 1000, blocks, width), widths=widths, grids=grids,
                                   offset=offset))
        offset += depth
    theta = torch.rand(offset, offset, generator=torch.Generator().manual_seed(0)) + 0.01
    theta.fill_diagonal_(0)
    return Scores(anchors=entries, theta_all=theta, floor=1e-6, temperature=1.0, split="val", caches={})


def _deit_expected(depth: int = 12) -> list[tuple[int, int, int]]:
    out = [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]
    for k in range(1, depth - 1):
        out += [(k, k + 1, k), (k + 1, k, k), (k + 1, k + 1, k)]
    return out


def test_deit_stitching_gives_snnets_list():
    vits = [("timm:deit_tiny_patch16_224", [12], 192), ("timm:deit_small_patch16_224", [12], 384),
            ("timm:deit_base_patch16_224", [12], 768)]
    scores = _scores(vits)
    doc = to_snnet_configs(select_snnet_nearest(scores))
    want = [{"comb_id": [k], "stitch_cfgs": [], "stitch_layers": []} for k in range(3)]
    for comb in ([0, 1], [1, 2]):
        want += [{"comb_id": comb, "stitch_cfgs": [[a, b]], "stitch_layers": [layer]} for a, b, layer in _deit_expected()]
    assert doc["stitch_configs"] == want
    assert len(want) == 71  # 3 anchors and 34 stitches per neighbouring pair
    assert doc["anchors"] == [s for s, _, _ in vits]
    assert doc["num_stitches"] == [{"comb_id": [0, 1], "count": 11}, {"comb_id": [1, 2], "count": 11}]
    back = from_snnet_configs(json.loads(json.dumps(doc)), scores)
    assert sorted((c.source, c.i, c.j) for c in back.selected) == sorted((c.source, c.i, c.j) for c in select_snnet_nearest(scores).selected)


def test_resnet_stitching_gives_snnets_stage_local_list():
    scores = _scores([("timm:resnet18", [2, 2, 2, 2], 64), ("timm:resnet50", [3, 4, 6, 3], 128)])
    doc = to_snnet_configs(select_snnet_nearest(scores))
    want = [{"comb_id": [0], "stitch_cfgs": [], "stitch_layers": []},
            {"comb_id": [1], "stitch_cfgs": [], "stitch_layers": []}]
    # stage 1: 2 -> 4 blocks, e = [0, 0, 1, 1]: (0, 1), (1, 2), (1, 3) on layers e_0, e_1, e_2
    want += [{"comb_id": [0, 1], "stage_id": 1, "stitch_cfgs": [[a, b]], "stitch_layers": [layer]}
             for a, b, layer in [(0, 1, 0), (1, 2, 0), (1, 3, 1)]]
    # stage 2: 2 -> 6 blocks, e = [0, 0, 0, 1, 1, 1]: (0, 1), (0, 2), (1, 3), (1, 4), (1, 5)
    want += [{"comb_id": [0, 1], "stage_id": 2, "stitch_cfgs": [[a, b]], "stitch_layers": [layer]}
             for a, b, layer in [(0, 1, 0), (0, 2, 0), (1, 3, 0), (1, 4, 1), (1, 5, 1)]]
    assert doc["stitch_configs"] == want
    back = from_snnet_configs(doc, scores)
    assert sorted((c.source, c.i, c.j) for c in back.selected) == sorted((c.source, c.i, c.j) for c in select_snnet_nearest(scores).selected)


def test_equal_depth_stages_pair_forward_only():
    assert snnet_stage_configs(2, 2, hierarchical=True) == [(0, 1, 0)]
    assert snnet_stage_configs(3, 3, hierarchical=True) == [(0, 1, 0), (1, 2, 1)]
    assert snnet_stage_configs(12, 12, hierarchical=False) == _deit_expected()


def test_a_configuration_snnets_rules_lack_gets_its_own_layer_and_one_across_stages_is_refused():
    from klas.selection.select import PairSelection, Selection, configurations

    scores = _scores([("timm:resnet18", [2, 2, 2, 2], 64), ("timm:resnet50", [3, 4, 6, 3], 128)])
    grid = {(c.i, c.j): c for c in configurations(scores, "resnet18", "resnet50")}
    base = select_snnet_nearest(scores)
    extra = grid[(4, 7)]  # stage 1: a = 1 (local), b = 7 - 3 = 4: after the end's whole stage 1
    sel = Selection(method="x", chain=base.chain, chain_rule="x", tau=0.0, tau_mode="none",
                    pairs=[PairSelection("resnet18", "resnet50", base.pairs[0].configs, base.pairs[0].selected + [extra],
                                         [0.0, 1.0], [0.0])], anchors=scores.anchors, last_block=base.last_block)
    doc = to_snnet_configs(sel)
    mine = [e for e in doc["stitch_configs"] if e.get("stage_id") == 1 and e["stitch_cfgs"] == [[1, 4]]]
    assert mine == [{"comb_id": [0, 1], "stage_id": 1, "stitch_cfgs": [[1, 4]], "stitch_layers": [2]}]
    assert {"comb_id": [0, 1], "stage_id": 1, "count": 3} in doc["num_stitches"]
    assert (4, 7) in [(c.i, c.j) for c in from_snnet_configs(doc, scores).selected]
    bad = dict(doc, stitch_configs=[{"comb_id": [0, 1], "stage_id": 1, "stitch_cfgs": [[5, 1]], "stitch_layers": [0]}])
    with pytest.raises(UsageError, match="outside stage 1"):
        from_snnet_configs(bad, scores)
    with pytest.raises(UsageError, match="comb_id"):
        from_snnet_configs(dict(doc, stitch_configs=[{"comb_id": [0, 9], "stitch_cfgs": [[0, 1]]}]), scores)


def test_snnets_own_config_files_name_their_anchors(tmp_path):
    pytest.importorskip("timm")
    deit = {"model": "snnet", "anchors": ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"],
            "nearest_stitching": True, "stitch_kernel_size": 2, "stitch_stride": 1}
    assert snnet_config_anchors(deit) == ["timm:deit_tiny_patch16_224", "timm:deit_small_patch16_224",
                                          "timm:deit_base_patch16_224"]
    assert snnet_config_anchors({"anchors": ["resnet18", "resnet50"]}) == ["timm:resnet18", "timm:resnet50"]
    swin = yaml.safe_load("MODEL:\n  TYPE: snnet\n  WEIGHTS: ['pretrained/swin_tiny_patch4_window7_224_22kto1k_"
                          "finetune.pth', 'pretrained/swin_small_patch4_window7_224_22kto1k_finetune.pth']\n")
    assert snnet_config_anchors(swin) == ["timm:swin_tiny_patch4_window7_224", "timm:swin_small_patch4_window7_224"]
    with pytest.raises(UsageError, match="'resnet1' is not a timm model name"):
        snnet_config_anchors({"anchors": ["resnet1"]})
    with pytest.raises(UsageError, match="names no anchors"):
        snnet_config_anchors({"model": "snnet"})


def test_import_snnet_reads_snnets_own_config_file(tmp_path, capsys):
    pytest.importorskip("timm")
    from klas.pipeline.cli import main

    scores = _scores([("timm:resnet18", [2, 2, 2, 2], 64), ("timm:resnet50", [3, 4, 6, 3], 128)])
    scores.save(tmp_path / "scores")
    config = tmp_path / "resnet18_resnet50.json"
    config.write_text(json.dumps({"anchors": ["resnet18", "resnet50"]}))
    assert main(["import-snnet", str(config), "--scores", str(tmp_path / "scores"), "--out", str(tmp_path / "i")]) == 0
    got = json.loads((tmp_path / "i" / "selection-imported.json").read_text())
    assert got["method"] == "imported"
    assert sorted((c["i"], c["j"]) for p in got["pairs"] for c in p["selected"]) == sorted(
        (c.i, c.j) for c in select_snnet_nearest(scores).selected)
    config.write_text(json.dumps({"anchors": ["resnet18", "resnet34"]}))
    assert main(["import-snnet", str(config), "--scores", str(tmp_path / "scores"), "--out", str(tmp_path / "j")]) == 2
    assert "score the config's anchors" in capsys.readouterr().err
