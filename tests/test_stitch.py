"""The stitched supernet: routes, the block walk, costs, least-squares initialisation."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from klas.anchors import load_anchor
from klas.anchors.module import ModuleAnchor
from klas.stitching.stitch import StitchedSupernet


def twin(anchor, name: str):
    """The same network under another name (a deep copy of its parts)."""
    m = copy.deepcopy(anchor.model)
    stem = nn.Sequential(m.conv1, m.bn1, nn.ReLU())
    blocks = [b for stage in (m.layer1, m.layer2, m.layer3) for b in stage]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), m.linear)
    return ModuleAnchor.from_parts(stem, blocks, head, input_size=(3, 32, 32), name=name, num_classes=10)


@pytest.fixture(scope="module")
def pair():
    return load_anchor("cifar-resnet:8?pretrained=false&seed=1"), load_anchor("cifar-resnet:14?pretrained=false&seed=2")


def test_anchor_routes_are_the_anchors(pair):
    net = StitchedSupernet(list(pair), [])
    x = torch.randn(3, 3, 32, 32)
    for k, a in enumerate(sorted(pair, key=lambda a: a.flops.total)):
        assert net.routes[k].name == a.name
        torch.testing.assert_close(net(x, k), a(x))
        assert net.route_flops(k) == a.flops.total
        assert net.route_params(k) == sum(p.numel() for p in a.model.parameters())


def test_stitch_route_cost_adds_up_its_parts(pair):
    small, big = pair
    net = StitchedSupernet(list(pair), [(small.name, big.name, 2, 3), (small.name, big.name, 1, 0)])
    k = 2
    f, g = small.flops, big.flops
    stitch = 32 * 32 * 16 * 16  # 1x1 conv 32 -> 32 at 16x16 (stage 2 of both): multiply-accumulates
    assert net.route_flops(k) == f.stem + sum(f.blocks[:2]) + stitch + sum(g.blocks[3:]) + g.head
    params = small.params.stem + sum(small.params.blocks[:2]) + (32 * 32 + 32) + sum(big.params.blocks[3:]) + big.params.head
    assert net.route_params(k) == params
    # the FLOPs a real forward of the route counts agree with the walk
    from torch.utils.flop_counter import FlopCounterMode

    for k in (2, 3):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net.eval()(torch.zeros(1, 3, 32, 32), k)
        # the counter counts a multiply-accumulate as two FLOPs, and neither counts bias adds
        assert 2 * net.route_flops(k) == counter.get_total_flops()


def test_stitching_a_network_to_its_twin_after_least_squares_is_the_network(pair):
    small = pair[0]
    other = twin(small, "twin")
    net = StitchedSupernet([small, other], [(small.name, "twin", i, i) for i in (1, 2)])
    net.init_stitches(torch.randn(16, 3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    for k in range(2, len(net)):
        torch.testing.assert_close(net(x, k), small(x), atol=1e-3, rtol=1e-3)


def test_least_squares_beats_the_default_initialisation(pair):
    small, big = pair
    net = StitchedSupernet(list(pair), [(small.name, big.name, 3, 5)])
    calib = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        src = small.forward_front(calib, 3)
        tgt = big.forward_front(calib, 5)
    before = (net.stitches[0](src) - tgt).square().mean()
    net.init_stitches(calib)
    after = (net.stitches[0](src) - tgt).square().mean()
    assert after < 0.5 * before


@pytest.mark.parametrize("stitch, message", [
    (("cifar-resnet8", "cifar-resnet14", 1, 5), "joins grids"),  # 32x32 onto 16x16
    (("cifar-resnet8", "cifar-resnet14", 0, 1), "outside the anchors"),
    (("cifar-resnet8", "cifar-resnet8", 2, 3), "joins an anchor to itself"),
])
def test_invalid_stitches_are_refused(pair, stitch, message):
    with pytest.raises(ValueError, match=message):
        StitchedSupernet(list(pair), [stitch])


def test_forward_many_equals_one_route_at_a_time(pair):
    small, big = pair
    net = StitchedSupernet(list(pair), [(small.name, big.name, 2, 3), (small.name, big.name, 1, 0),
                                        (small.name, big.name, 2, 4), (small.name, big.name, 3, 5)])
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        many = net.forward_many(x)
        assert sorted(many) == list(range(len(net)))
        for k in range(len(net)):
            torch.testing.assert_close(many[k], net(x, k))


def test_a_supernet_holds_the_anchors_of_its_chain_only():
    """METHOD.md §5.5: anchors the chain skips are not routes of the KLAS supernet (unless asked)."""
    from klas.anchors import load_anchor
    from klas.pipeline.run import _build_supernet
    from klas.selection.select import Config, PairSelection, Selection

    anchors = [load_anchor(f"cifar-resnet:{d}?pretrained=false") for d in (8, 14, 20)]
    stitch = Config("cifar-resnet8", "cifar-resnet20", 1, 2, 0, 0.0, 0.0, 0.0)
    doc = Selection("klas", ["cifar-resnet8", "cifar-resnet20"], "minimax", 0.05, "relative",
                    [PairSelection("cifar-resnet8", "cifar-resnet20", [stitch], [stitch], [0.0, 1.0], [0.0])], [], {})
    chain = _build_supernet(anchors, doc)
    assert [r.name for r in chain.routes] == ["cifar-resnet8", "cifar-resnet20", "cifar-resnet8:1->cifar-resnet20:2"]
    every = _build_supernet(anchors, doc, "all")
    assert [r.name for r in every.routes][:3] == ["cifar-resnet8", "cifar-resnet14", "cifar-resnet20"]
