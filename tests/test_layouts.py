"""Stitching across layouts: feature maps, channels-last maps and tokens with class tokens.

Random-weight timm models at 64x64: a ResNet-18 (``[B, C, H, W]``), a Swin-T (``[B, H, W, C]``)
and a DeiT-Ti (``[B, 1 + h·w, C]``), whose grids meet at 16x16, 8x8, 4x4 and 2x2 (ViT: 4x4).
"""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from klas.anchors import load_anchor
from klas.anchors.base import token_grid
from klas.extraction.extract import anchor_info
from klas.scoring.scores import AnchorEntry, _anchor_entry
from klas.selection.select import config_flops
from klas.stitches import stitch_flops, stitch_positions
from klas.stitching.stitch import LayoutStitch, StitchedSupernet, from_tokens, stitching_layer, to_tokens

pytest.importorskip("timm")

SPECS = {
    "resnet": "timm:resnet18?pretrained=false&img_size=64&num_classes=10",
    "swin": "timm:swin_tiny_patch4_window7_224?pretrained=false&img_size=64&window_size=4&num_classes=10",
    "vit": "timm:deit_tiny_patch16_224?pretrained=false&img_size=64&num_classes=10",
}


@pytest.fixture(scope="module")
def anchors():
    torch.manual_seed(0)
    return {k: load_anchor(spec) for k, spec in SPECS.items()}


def _grid(a, k):
    return tuple(a.block_info[k - 1].grid)


def _every_configuration(f, g):
    """Every (i, j), i in 1..m_f−1 and j in 1..m_g−1, whose grids agree (j = 0 where g's stem does too)."""
    out = [(f.name, g.name, i, j) for i in range(1, f.depth) for j in range(1, g.depth) if _grid(f, i) == _grid(g, j)]
    with torch.no_grad():
        stem_grid = g.width_and_grid(g.run_stem(g._blank_input()), g.layouts[0])[1]
    return out + [(f.name, g.name, i, 0) for i in range(1, f.depth) if _grid(f, i) == stem_grid]


def test_grids_are_spatial_whatever_the_layout(anchors):
    r, s, v = anchors["resnet"], anchors["swin"], anchors["vit"]
    assert v.prefix_tokens == 1 and r.prefix_tokens == s.prefix_tokens == 0
    assert [b.grid for b in v.block_info] == [(4, 4)] * 12  # 16 patch tokens; the class token is not in the grid
    assert {b.grid for b in r.block_info} == {b.grid for b in s.block_info} == {(16, 16), (8, 8), (4, 4), (2, 2)}
    assert token_grid(16, (64, 64)) == (4, 4)
    assert token_grid(8, (32, 64)) == (2, 4)  # rows over the input's height
    assert token_grid(7, (32, 32)) == (7,)  # no grid of the input's aspect: the count alone


@pytest.mark.parametrize("layout_in, layout_out, prefix_in, prefix_out", [
    ("nchw", "nhwc", 0, 0), ("nhwc", "nchw", 0, 0), ("nchw", "nlc", 0, 1), ("nlc", "nchw", 1, 0),
    ("nhwc", "nlc", 0, 2), ("nlc", "nlc", 1, 2), ("nlc", "nhwc", 2, 0),
])
def test_a_layout_stitch_is_its_linear_map_between_the_two_layouts(layout_in, layout_out, prefix_in, prefix_out):
    torch.manual_seed(1)
    b, c_in, c_out, grid = 3, 5, 7, (2, 3)
    maps = torch.randn(b, c_in, *grid)  # the same activation, laid out each way by hand below
    layer = stitching_layer(c_in, c_out, layout_in=layout_in, layout_out=layout_out, grid=grid,
                            prefix_in=prefix_in, prefix_out=prefix_out)
    assert isinstance(layer, LayoutStitch)
    with torch.no_grad():
        layer.bias.normal_()
        if layer.prefix is not None:
            layer.prefix.normal_()
    cls_in = torch.randn(b, prefix_in, c_in)
    x = {"nchw": maps, "nhwc": maps.permute(0, 2, 3, 1),
         "nlc": torch.cat([cls_in, maps.flatten(2).transpose(1, 2)], dim=1)}[layout_in]
    y = layer(x)
    # by hand: every grid position (row-major) through the map, the target's class tokens learned
    mapped = torch.einsum("bchw,oc->bohw", maps, layer.weight) + layer.bias.view(1, -1, 1, 1)
    want = {"nchw": mapped, "nhwc": mapped.permute(0, 2, 3, 1),
            "nlc": torch.cat([layer.prefix.expand(b, -1, -1) if prefix_out else mapped.new_zeros(b, 0, c_out),
                              mapped.flatten(2).transpose(1, 2)], dim=1)}[layout_out]
    torch.testing.assert_close(y, want)


def test_class_tokens_are_mapped_when_both_sides_have_as_many():
    layer = stitching_layer(4, 6, layout_in="nlc", layout_out="nlc", grid=(2, 2), prefix_in=1, prefix_out=1)
    assert type(layer) is torch.nn.Linear  # existing token stitches keep their module and checkpoint keys
    assert type(stitching_layer(4, 6, layout_in="nchw", layout_out="nchw", grid=(2, 2))) is torch.nn.Conv2d
    t = torch.randn(2, 5, 4)
    for layout in ("nchw", "nhwc", "nlc"):
        torch.testing.assert_close(to_tokens(from_tokens(t, layout, (5,) if layout == "nlc" else (1, 5)), layout), t)


@pytest.mark.parametrize("pair", [("resnet", "swin"), ("swin", "resnet"), ("resnet", "vit"), ("vit", "resnet")])
def test_every_configuration_across_layouts_runs_and_counts_its_flops(anchors, pair):
    f, g = anchors[pair[0]], anchors[pair[1]]
    stitches = _every_configuration(f, g)
    assert stitches, f"{pair}: no grid in common"
    net = StitchedSupernet([f, g], stitches).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = net.forward_many(x)
    assert set(out) == set(range(len(net)))
    for k, logits in out.items():
        assert logits.shape == (2, 10) and torch.isfinite(logits).all(), net.routes[k].name
    entries = {a.name: AnchorEntry.from_anchor(a) for a in (f, g)}
    for k in range(2, len(net)):  # each route's FLOPs: the counter on a real forward, the walk, selection's sum
        r = net.routes[k]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(x[:1], k)
        # FLOPs are multiply-accumulates, which the counter counts as two each (neither counts bias adds)
        assert 2 * net.route_flops(k) == counter.get_total_flops(), r.name
        assert config_flops(entries[r.source], entries[r.target], r.i, r.j) == net.route_flops(k), r.name


def test_a_stitch_into_the_targets_first_block_maps_to_its_stem_width():
    """ResNet-50's stem gives 64 channels, its first block 256: a stitch at j = 0 maps to 64, and the
    selection's FLOPs (from the scores' entries, or the cache's manifest) agree with the supernet's."""
    torch.manual_seed(0)
    f, g = load_anchor(SPECS["resnet"]), load_anchor("timm:resnet50?pretrained=false&img_size=64&num_classes=10")
    assert (g.stem_info.width, g.block_info[0].width, tuple(g.stem_info.grid)) == (64, 256, _grid(f, 1))
    net = StitchedSupernet([f, g], [(f.name, g.name, 1, 0)]).eval()
    assert net.stitches[0](torch.rand(2, 64, 16, 16)).shape == (2, 64, 16, 16)
    entry_f, entry_g = AnchorEntry.from_anchor(f), AnchorEntry.from_anchor(g)
    assert (entry_f.stem_width, entry_g.stem_width) == (None, 64)
    assert config_flops(entry_f, entry_g, 1, 0) == net.route_flops(2)
    assert "stem_width" not in anchor_info(f) and anchor_info(g)["stem_width"] == 64
    assert _anchor_entry(json.loads(json.dumps(entry_g.to_json())), 0).stem_width == 64


def test_stitch_flops_count_class_tokens_only_where_they_are_mapped():
    assert stitch_flops(4, 6, (2, 2), 1, 1) == 4 * 6 * 5  # multiply-accumulates at 4 positions + 1 class token
    assert stitch_flops(4, 6, (2, 2), 0, 1) == stitch_flops(4, 6, (2, 2), 1, 0) == 4 * 6 * 4


@pytest.mark.parametrize("pair, cut", [(("resnet", "vit"), (6, 3)), (("vit", "resnet"), (5, 5)),
                                       (("resnet", "swin"), (3, 3)), (("swin", "resnet"), (8, 5))])
def test_least_squares_across_layouts_is_the_least_squares_fit_of_the_grid_positions(anchors, pair, cut):
    f, g = anchors[pair[0]], anchors[pair[1]]
    i, j = cut
    assert _grid(f, i) == _grid(g, j)
    net = StitchedSupernet([f, g], [(f.name, g.name, i, j)])
    torch.manual_seed(2)
    calib = torch.rand(64, 3, 64, 64)  # more grid positions than features: an over-determined fit
    net.init_stitches(calib)
    with torch.no_grad():
        src, tgt = f.forward_front(calib, i), g.forward_front(calib, j)

        def positions(h, a):  # every grid position as a row, by hand: class tokens dropped
            if a.layouts[0] == "nchw":
                return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
            return h[:, a.prefix_tokens:].reshape(-1, h.shape[-1]) if a.layouts[0] == "nlc" else h.reshape(-1, h.shape[-1])

        a, b = positions(src, f).double(), positions(tgt, g).double()
        design = torch.cat([a, torch.ones(len(a), 1, dtype=torch.float64)], dim=1)
        best = design @ torch.linalg.lstsq(design, b).solution
        got = net.stitches[0](src)
        assert got.shape == tgt.shape
        residual = (positions(got, g).double() - b).square().sum()
        optimal = (best - b).square().sum()
        assert residual <= optimal * 1.01 + 1e-6  # positions paired in another order would fit worse
        assert optimal < (b - b.mean(0)).square().sum()
        if g.prefix_tokens:  # the class token starts as the target's mean one
            torch.testing.assert_close(net.stitches[0].prefix, tgt[:, :g.prefix_tokens].mean(0))


def test_klas_anchors_describes_what_a_family_can_stitch(capsys):
    import json

    from klas.pipeline.cli import main

    assert main(["anchors", SPECS["resnet"], SPECS["vit"], "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    resnet, vit = doc["anchors"] if doc["anchors"][0]["name"] == "resnet18" else doc["anchors"][::-1]
    assert vit["prefix_tokens"] == 1 and vit["stages"] == [{"grid": [4, 4], "blocks": [1, 12]}]
    assert [s["grid"] for s in resnet["stages"]] == [[16, 16], [8, 8], [4, 4], [2, 2]]
    (pair,) = doc["pairs"]
    assert pair["shared_grids"] == [[4, 4]]
    assert pair["grid_valid"] == 2 * 11  # ResNet blocks 5 and 6 (4x4) into DeiT blocks 1..11
    assert pair["snnet_nearest"] is None  # four stages against one: SN-Net's rules do not apply
    assert 0 <= pair["in_flops_range"] <= pair["grid_valid"]
    assert main(["anchors", SPECS["resnet"], SPECS["vit"]]) == 0
    assert "shared grids 4x4; 22 valid" in capsys.readouterr().out


@pytest.mark.parametrize("prefix, layout, message", [
    (1, "nchw", "every block outputs tokens"), (1, ["nlc", "nchw"], "every block outputs tokens"),
    (float("nan"), "nlc", "an integer"), (-1, "nlc", "an integer"), (10**9, "nlc", "an integer"),
    (True, "nlc", "an integer"),
])
def test_prefix_tokens_belong_to_token_anchors_and_are_a_count(prefix, layout, message):
    from torch import nn

    from klas.anchors.module import ModuleAnchor

    blocks = [nn.Identity(), nn.Identity()]
    with pytest.raises(ValueError, match=message):
        ModuleAnchor.from_parts(nn.Identity(), blocks, nn.Identity(), input_size=(3, 8, 8), layout=layout,
                                num_classes=3, prefix_tokens=prefix)
