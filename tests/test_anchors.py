"""Anchor protocol: every adapter's cut-and-rejoin equals the model's own forward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from klas.anchors import KINDS, TIMM_FAMILIES, Anchor, ModuleAnchor, load_anchor, parse_spec
from klas.anchors.base import LOGITS
from klas.errors import AnchorError

# every registered kind's test specs: random weights, small inputs, nothing downloaded
SPECS = [spec for kind in KINDS.values() for spec in kind.test_specs]


def _model_forward(anchor: Anchor, x: torch.Tensor) -> torch.Tensor:
    """The wrapped model's own forward; a module: anchor's parts chained by hand (its model is their dict)."""
    if isinstance(anchor, ModuleAnchor):
        h = anchor.model["stem"](x)
        for block in anchor.model["blocks"]:
            h = block(h)
        return anchor.model["head"](h)
    if anchor.input_mean is not None:  # an anchor that normalises in its stem (the zoo's); its model takes normalised images
        x = (x - anchor.input_mean) / anchor.input_std
    return anchor.model(x)


def small_module_anchor() -> Anchor:
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    blocks = [nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(3)]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    return ModuleAnchor.from_parts(stem, blocks, head, input_size=(3, 16, 16), name="tiny")


@pytest.fixture(scope="module", params=SPECS)
def anchor(request) -> Anchor:
    torch.manual_seed(0)
    return load_anchor(request.param)


def test_full_forward_equals_model(anchor):
    x = torch.randn(2, *anchor.input_size)
    with torch.no_grad():
        torch.testing.assert_close(anchor(x), _model_forward(anchor, x), rtol=0, atol=0)


def test_split_and_rejoin_at_every_block_equals_model(anchor):
    x = torch.randn(2, *anchor.input_size)
    with torch.no_grad():
        ref = _model_forward(anchor, x)
        for k in range(anchor.depth + 1):
            torch.testing.assert_close(anchor.forward_back(anchor.forward_front(x, k), k), ref,
                                       rtol=1e-5, atol=1e-5, msg=f"cut at block {k}")


def test_block_info_and_pooling_agree(anchor):
    x = torch.randn(3, *anchor.input_size)
    infos = anchor.block_info
    assert len(infos) == anchor.depth
    with torch.no_grad():
        for k, h in anchor.block_outputs(x):
            if k == LOGITS:
                assert h.shape == (3, anchor.num_classes)
                continue
            pooled = anchor.pool(h, k)
            assert pooled.shape == (3, infos[k - 1].width)
            assert torch.isfinite(pooled).all()


def test_flops_are_positive_and_add_up(anchor):
    f = anchor.flops
    assert len(f.blocks) == anchor.depth
    assert f.stem >= 0 and all(b > 0 for b in f.blocks) and f.head > 0
    assert f.total == f.stem + sum(f.blocks) + f.head


def test_cifar_resnet_structure_and_flops():
    a = load_anchor("cifar-resnet:20?pretrained=false")
    assert a.depth == 9
    assert [i.width for i in a.block_info] == [16] * 3 + [32] * 3 + [64] * 3
    assert [i.grid for i in a.block_info] == [(32, 32)] * 3 + [(16, 16)] * 3 + [(8, 8)] * 3
    # FLOPs are multiply-accumulates: two 3x3 convs 16->16 on 32x32 are 2 * 32*32 * 16*16*9
    assert a.flops.blocks[0] == 2 * 32 * 32 * 16 * 16 * 9
    # the figures the field reports for these networks (timm / fvcore / papers): 40.55 M and 125.49 M
    assert a.flops.total == 40_551_040
    b = load_anchor("cifar-resnet:56?pretrained=false")
    assert b.depth == 27 and round(b.flops.total / 1e4) == 12549


def test_module_anchor_and_module_spec():
    a = small_module_anchor()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = a.model["head"](a.model["blocks"][2](a.model["blocks"][1](a.model["blocks"][0](a.model["stem"](x)))))
        torch.testing.assert_close(a(x), ref)
    assert a.num_classes == 5 and a.depth == 3
    b = load_anchor("module:tests.test_anchors:small_module_anchor")
    assert b.spec == "module:tests.test_anchors:small_module_anchor" and b.depth == 3


def test_spec_parsing():
    assert parse_spec("timm:resnet18?pretrained=false&img_size=64&x=1.5&y=abc") == (
        "timm", ["resnet18"], {"pretrained": False, "img_size": 64, "x": 1.5, "y": "abc"})
    assert parse_spec("cifar-resnet:20:/a/b.th") == ("cifar-resnet", ["20", "/a/b.th"], {})


@pytest.mark.parametrize("spec,message", [
    ("nonsense", "KIND:NAME"),
    ("foo:bar", "unknown kind"),
    ("timm:not_a_model_xyz", "unknown timm model"),
    ("timm:resnet1?pretrained=false", "unknown timm model 'resnet1'; did you mean resnet18"),
    ("cifar-resnet:21?pretrained=false", "6n \\+ 2"),
    ("cifar-resnet:20:/no/such/file.th", "does not exist"),
    ("module:no_such_pkg.mod:f", "cannot import"),
    ("timm:resnet18?pretrained=false&a", "not key=value"),
])
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(AnchorError, match=message):
        load_anchor(spec)


def test_checkpoint_of_wrong_depth_names_the_keys(tmp_path):
    from klas.anchors import CifarResNet

    path = tmp_path / "r32.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in CifarResNet(32).state_dict().items()}}, path)
    with pytest.raises(AnchorError, match=r"unexpected keys \[layer1\.3\.bn1"):
        load_anchor(f"cifar-resnet:20:{path}")
    assert load_anchor(f"cifar-resnet:32:{path}").depth == 15


def test_checkpoint_that_needs_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.th"
    torch.save({"state_dict": {}, "obj": object()}, path)  # not loadable with weights_only=True
    with pytest.raises(AnchorError, match="not a plain checkpoint.*will not unpickle") as e:
        load_anchor(f"cifar-resnet:20:{path}")
    assert "weights_only=False" not in str(e.value)  # torch's advice to unpickle is not passed on


@pytest.mark.parametrize("indices, blocks", [
    (None, [1, 2, 3, 4, 5]), (2, [4, 5]), (5, [1, 2, 3, 4, 5]), ([1, -1], [1, 5]), ([-5, 3], [1, 3]), ([], []),
])
def test_take_blocks_maps_user_indices_to_block_numbers(indices, blocks):
    from klas.anchors.base import take_blocks

    assert take_blocks(5, indices) == blocks


@pytest.mark.parametrize("indices", [0, 6, [0], [6], [-6], [True], ["2"]])
def test_take_blocks_refuses_what_is_not_a_block(indices):
    from klas.anchors.base import take_blocks

    with pytest.raises(IndexError, match="blocks 1..5|has 5 blocks"):
        take_blocks(5, indices)


def test_every_kind_and_timm_family_has_a_contract_test():
    assert all(kind.test_specs for kind in KINDS.values()), [k for k, v in KINDS.items() if not v.test_specs]
    for family in TIMM_FAMILIES.values():
        assert family.test_spec in SPECS
        assert family.adapts(load_anchor(family.test_spec).model), family.name


def test_img_size_sets_a_convolutional_models_input_without_reaching_timm():
    a = load_anchor("timm:resnet18?pretrained=false&img_size=64")
    assert a.input_size == (3, 64, 64)
    with torch.no_grad():
        assert a(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_spec_options_parse_strictly():
    assert parse_spec("timm:resnet18?num_classes=1")[2] == {"num_classes": 1}
    assert parse_spec("cifar-resnet:20?pretrained=0")[2] == {"pretrained": False}
    for bad, message in (("cifar-resnet:20?num_classes=1.5", "not an int"), ("cifar-resnet:20?pretraind=no",
                                                                                 "unknown option 'pretraind'")):
        with pytest.raises(AnchorError, match=message):
            parse_spec(bad)


def test_klas_anchors_lists_every_registered_kind_and_family(capsys):
    import json

    from klas.pipeline.cli import main

    assert main(["anchors", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [k["kind"] for k in doc["kinds"]] == list(KINDS)
    assert [f["family"] for f in doc["timm_families"]] == list(TIMM_FAMILIES)
    cifar = next(k for k in doc["kinds"] if k["kind"] == "cifar-resnet")
    assert cifar["options"] == {"pretrained": "bool", "num_classes": "int", "seed": "int"}


def test_parameters_per_part_are_counted_for_every_kind(anchor):
    """Stem, blocks and head parameters add up to at most the model's (parts without any, such as a
    stem that only normalises, count 0)."""
    p = anchor.params
    assert all(b > 0 for b in p.blocks) and p.stem >= 0 and p.head > 0
    assert p.total <= sum(t.numel() for t in anchor.model.parameters())


def test_normalisation_moved_into_the_stem_changes_no_output():
    """An anchor trained on normalised images, after `normalise_in_stem`, takes [0, 1] images and
    gives exactly the logits, block outputs and FLOPs it gave on the normalised ones."""
    torch.manual_seed(0)
    anchor = load_anchor("cifar-resnet:20?pretrained=false").eval()
    mean, std = torch.tensor(anchor.mean).view(1, 3, 1, 1), torch.tensor(anchor.std).view(1, 3, 1, 1)
    images = torch.rand(3, *anchor.input_size)
    with torch.no_grad():
        before = anchor(((images - mean) / std))
        front = anchor.forward_front((images - mean) / std, 5)
    flops = anchor.flops
    assert anchor.normalise_in_stem()
    assert anchor.mean == (0.0, 0.0, 0.0) and anchor.std == (1.0, 1.0, 1.0)
    with torch.no_grad():
        torch.testing.assert_close(anchor(images), before, rtol=0, atol=0)
        torch.testing.assert_close(anchor.forward_front(images, 5), front, rtol=0, atol=0)
    anchor.__dict__.pop("flops")  # counted again, through the normalising stem
    assert anchor.flops == flops
    assert not anchor.normalise_in_stem()  # already there: nothing moves twice
    assert not load_anchor("cifar-zoo:resnet?pretrained=false").normalise_in_stem()  # the zoo's take [0, 1]


def test_anchors_of_different_normalisations_share_one_input():
    from klas.errors import ConfigError
    from klas.pipeline.run import one_input

    torch.manual_seed(0)
    resnet, zoo = load_anchor("cifar-resnet:20?pretrained=false"), load_anchor("cifar-zoo:googlenet?pretrained=false")
    assert resnet.mean != zoo.mean
    lines = []
    assert one_input([zoo, resnet], lines.append) == [zoo, resnet]
    assert {(a.mean, a.std) for a in (zoo, resnet)} == {((0.0,) * 3, (1.0,) * 3)}
    assert len(lines) == 1 and resnet.name in lines[0] and zoo.name not in lines[0]
    same = [load_anchor("cifar-resnet:20?pretrained=false"), load_anchor("cifar-resnet:32?pretrained=false")]
    one_input(same, lines.append)  # one normalisation already: left as it is, nothing logged
    assert same[0].mean != (0.0, 0.0, 0.0) and len(lines) == 1
    with pytest.raises(ConfigError, match="different input sizes"):
        one_input([resnet, small_module_anchor()])
