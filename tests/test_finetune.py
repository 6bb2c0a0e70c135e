"""Finetuning: route schedule, resume equals an uninterrupted run, checkpoint checks, frozen BatchNorm."""
from __future__ import annotations

import pytest
import torch

from klas.anchors import load_anchor
from klas.errors import KlasError
from klas.stitching.finetune import CHECKPOINT, FinetuneSettings, finetune, route_schedule
from klas.stitching.stitch import StitchedSupernet

from helpers import RandomImages as Images


def supernet() -> StitchedSupernet:
    a, b = load_anchor("cifar-resnet:8?pretrained=false&seed=1"), load_anchor("cifar-resnet:14?pretrained=false&seed=2")
    return StitchedSupernet([a, b], [(a.name, b.name, 1, 2), (a.name, b.name, 2, 4)])


def test_route_schedule_is_seeded_and_uniform():
    s = route_schedule(5, 5000, seed=3)
    assert torch.equal(s, route_schedule(5, 5000, seed=3)) and not torch.equal(s, route_schedule(5, 5000, seed=4))
    counts = torch.bincount(s, minlength=5).float()
    assert (counts / 5000 - 0.2).abs().max() < 0.03


def test_resumed_finetuning_equals_an_uninterrupted_run(tmp_path):
    data = Images()
    straight, resumed = supernet(), supernet()
    settings = FinetuneSettings(steps=6, batch_size=8, checkpoint_every=3, lr=1e-3)
    finetune(straight, data, settings, tmp_path / "a", progress=False)
    # a crash right after the step-3 checkpoint, then a new supernet (a new process) that finds it
    _stop_after(resumed, data, settings, tmp_path / "b", stop=3)
    again = supernet()
    stats = finetune(again, data, settings, tmp_path / "b", progress=False)
    assert stats["resumed_from"] == 3
    for (k, v), w in zip(straight.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(w, v, atol=1e-6, rtol=1e-6, msg=k)


def _stop_after(net, data, settings, out, stop: int):
    """Runs finetune but raises out of it after `stop` steps (a crash right after a checkpoint)."""
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def step(self, *a, **k):
        if calls["n"] == stop:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *a, **k)

    torch.optim.AdamW.step = step
    try:
        with pytest.raises(KeyboardInterrupt):
            finetune(net, data, settings, out, progress=False)
    finally:
        torch.optim.AdamW.step = original
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == stop


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    data = Images()
    finetune(supernet(), data, FinetuneSettings(steps=2, batch_size=8), tmp_path, progress=False)
    with pytest.raises(KlasError, match="other routes or finetune settings"):
        finetune(supernet(), data, FinetuneSettings(steps=2, batch_size=8, lr=5e-4), tmp_path, progress=False)


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(KlasError, match="not a readable finetuning checkpoint"):
        finetune(supernet(), Images(), FinetuneSettings(steps=2, batch_size=8), tmp_path, progress=False)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_batchnorm_keeps_running_statistics(tmp_path, freeze):
    net = supernet()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running_mean" in k}
    finetune(net, Images(), FinetuneSettings(steps=2, batch_size=8, freeze_bn=freeze), tmp_path, progress=False)
    after = {k: v for k, v in net.state_dict().items() if "running_mean" in k}
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    assert unchanged == freeze


def test_frozen_anchors_without_a_stitch_train_nothing_and_keep_the_anchors(tmp_path):
    """A set with no stitch under the stitches-only protocol: no step runs, the anchors stay as they
    were, a complete checkpoint is written, and a second call finds it."""
    a, b = load_anchor("cifar-resnet:8?pretrained=false&seed=1"), load_anchor("cifar-resnet:14?pretrained=false&seed=2")
    net = StitchedSupernet([a, b], [])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    settings = FinetuneSettings(steps=5, batch_size=8, stitches_only=True)
    stats = finetune(net, Images(), settings, tmp_path, progress=False)
    assert stats["nothing_to_train"] and stats["final_loss"] is None
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / CHECKPOINT).is_file()
    again = finetune(StitchedSupernet([a, b], []), Images(), settings, tmp_path, progress=False)
    assert again["nothing_to_train"]
    # with the anchors training, an empty set is SN-Net's protocol on the anchors alone: steps run
    # (fresh anchors: the stitches-only protocol froze those above in place)
    a, b = load_anchor("cifar-resnet:8?pretrained=false&seed=1"), load_anchor("cifar-resnet:14?pretrained=false&seed=2")
    moved = finetune(StitchedSupernet([a, b], []), Images(), FinetuneSettings(steps=2, batch_size=8, lr=1e-2),
                     tmp_path / "snnet", progress=False)
    assert not moved.get("nothing_to_train") and moved["final_loss"] is not None
