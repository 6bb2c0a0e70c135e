"""wrap_model: any nn.Module as an anchor, cut at named blocks by tracing its forward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from klas.anchors.wrapped import wrap_model
from klas.errors import AnchorError


class SmallNet(nn.Module):
    """A user's own CNN: glue between its blocks lives in its forward (relu, max-pool, flatten)."""

    def __init__(self, width: int = 8, classes: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.features = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
                                      nn.Conv2d(width, 2 * width, 3, padding=1))
        self.last = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.relu(self.conv(x))
        h = F.relu(self.features[0](h))
        h = self.features[1](h)
        h = F.max_pool2d(F.relu(self.features[2](h)), 2)
        h = self.last(h)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.Linear(3, 2)

    def forward(self, x):
        h = self.a(x)
        return self.fc((self.b(h) + h).mean(dim=(2, 3)))  # h is used past b: no cut after b


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = nn.Conv2d(3, 3, 1), nn.Linear(3, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:  # control flow on a tensor's value: not traceable
            h = h * 2
        return self.fc(h.mean(dim=(2, 3)))


BLOCKS = ["features.0", "features.1", "features.2", "last"]


def _hooked(model, names, x):
    """The outputs of the named modules in one plain forward (the reference)."""
    seen = {}
    handles = [dict(model.named_modules())[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
               for n in names]
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    return [seen[n] for n in names], logits


def test_a_wrapped_model_runs_as_the_model_and_cuts_at_its_blocks():
    torch.manual_seed(0)
    model = SmallNet().eval()
    anchor = wrap_model(model, BLOCKS, input_size=(3, 16, 16), name="small")
    x = torch.randn(5, 3, 16, 16)
    outputs, logits = _hooked(model, BLOCKS, x)
    with torch.no_grad():
        assert anchor.num_classes == 7 and anchor.depth == 4
        torch.testing.assert_close(anchor(x), logits, rtol=0, atol=0)
        got = [h for k, h in anchor.block_outputs(x) if k != "logits"]
        for a, b in zip(got, outputs):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        for i in range(anchor.depth + 1):  # every cut composes back to the whole model
            torch.testing.assert_close(anchor.forward_back(anchor.forward_front(x, i), i), logits, rtol=0, atol=0)
    # the max-pool after features.2 is glue: it goes with the next block, so block 3 is still 16x16
    assert [b.grid for b in anchor.block_info] == [(16, 16), (16, 16), (16, 16), (8, 8)]
    # the model owns the parameters: the anchor's weights are the model's, and training one trains the other
    assert set(anchor.model.state_dict()) == set(model.state_dict())
    assert anchor.flops.total > 0 and len(anchor.flops.blocks) == 4
    before = model.last.weight.detach().clone()
    anchor.forward_back(anchor.forward_front(x, 3), 3).sum().backward()
    assert model.last.weight.grad is not None and torch.equal(model.last.weight, before)


def test_a_timm_model_is_wrapped_at_its_residual_units():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    units = [f"layer{s}.{u}" for s in range(1, 5) for u in range(2)]
    anchor = wrap_model(model, units, input_size=(3, 64, 64), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                        name="resnet18")
    x = torch.randn(2, 3, 64, 64)
    outputs, logits = _hooked(model, units, x)
    with torch.no_grad():
        torch.testing.assert_close(anchor(x), logits)
        for (k, h), ref in zip(anchor.block_outputs(x), outputs):
            torch.testing.assert_close(h, ref)
        torch.testing.assert_close(anchor.forward_back(anchor.forward_front(x, 5), 5), logits)
    assert [b.width for b in anchor.block_info] == [64, 64, 128, 128, 256, 256, 512, 512]


def test_cuts_that_would_lose_a_value_or_cannot_be_traced_are_refused_with_one_line():
    # after b, the sum still needs a's output: the skip connection crosses that cut
    with pytest.raises(AnchorError, match=r"cannot cut after block 'b': the forward carries a past it.*skip"):
        wrap_model(Skip(), ["a", "b"], input_size=(3, 4, 4))
    assert wrap_model(Skip(), ["a"], input_size=(3, 4, 4)).depth == 1  # before the residual unit: fine
    with pytest.raises(AnchorError, match="cannot be traced"):
        wrap_model(Branchy(), ["a"], input_size=(3, 4, 4))
    with pytest.raises(AnchorError, match=r"'featurs.0' is not a submodule.*did you mean 'features.0'"):
        wrap_model(SmallNet(), ["featurs.0"], input_size=(3, 16, 16))
    with pytest.raises(AnchorError, match="forward order"):
        wrap_model(SmallNet(), ["last", "features.0"], input_size=(3, 16, 16))
    with pytest.raises(AnchorError, match="named twice"):
        wrap_model(SmallNet(), ["last", "last"], input_size=(3, 16, 16))


def test_two_wrapped_models_stitch_in_a_supernet():
    from klas.stitching.stitch import StitchedSupernet

    torch.manual_seed(1)
    small = wrap_model(SmallNet(width=4).eval(), BLOCKS, input_size=(3, 16, 16), name="small")
    large = wrap_model(SmallNet(width=8).eval(), BLOCKS, input_size=(3, 16, 16), name="large")
    net = StitchedSupernet([small, large], [("small", "large", 2, 2), ("small", "large", 1, 3)])
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        for k in range(len(net)):
            assert net(x, k).shape == (3, 7)
        torch.testing.assert_close(net(x, 0), small(x))  # the anchors are routes as they are


GENERIC_TIMM = ["convnext_atto", "mobilenetv3_small_050", "regnetx_002", "ghostnet_100", "edgenext_xx_small",
                "rexnet_100"]


@pytest.mark.parametrize("name", GENERIC_TIMM)
def test_timm_families_without_an_adapter_are_cut_at_their_feature_blocks(name):
    """`timm:NAME` for families beyond the four with their own adapter: every cut rejoins to the
    model's own forward, and the block outputs are those of the modules feature_blocks names."""
    pytest.importorskip("timm")
    from klas.anchors import load_anchor
    from klas.anchors.timm_models import feature_blocks

    anchor = load_anchor(f"timm:{name}?pretrained=false&num_classes=10")
    assert anchor.block_names == feature_blocks(anchor.model) or anchor.block_names == [
        f["module"] for f in anchor.model.feature_info]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    outputs, logits = _hooked(anchor.model, anchor.block_names, x)
    with torch.no_grad():
        for i in range(anchor.depth + 1):
            torch.testing.assert_close(anchor.forward_back(anchor.forward_front(x, i), i), logits)
        for (k, h), ref in zip(anchor.block_outputs(x), outputs):
            torch.testing.assert_close(h, ref)
    assert anchor.depth >= 4 and anchor.flops.total > 0


def test_img_size_sets_a_generic_families_input_size():
    pytest.importorskip("timm")
    from klas.anchors import load_anchor

    anchor = load_anchor("timm:convnext_atto?pretrained=false&num_classes=10&img_size=64")
    assert anchor.input_size == (3, 64, 64) and anchor.block_info[0].grid == (16, 16)


def test_two_generic_timm_families_stitch():
    pytest.importorskip("timm")
    from klas.anchors import load_anchor
    from klas.stitching.stitch import StitchedSupernet

    a = load_anchor("timm:mobilenetv3_small_050?pretrained=false&num_classes=10")
    b = load_anchor("timm:ghostnet_100?pretrained=false&num_classes=10")
    # the last block of a on the 28x28 grid, into b after its first 28x28 block
    i = max(k for k, info in enumerate(a.block_info, start=1) if info.grid == (28, 28) and k < a.depth)
    j = min(k for k, info in enumerate(b.block_info, start=1) if info.grid == (28, 28))
    net = StitchedSupernet([a, b], [(a.name, b.name, i, j)])
    with torch.no_grad():
        assert net(torch.randn(2, 3, 224, 224), len(net) - 1).shape == (2, 10)
