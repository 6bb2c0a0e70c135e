"""Joint probe training from caches."""
from __future__ import annotations

import pytest
import torch

from klas.cache import CacheReader
from klas.errors import CacheError
from klas.scoring.probes import JointProbes, load_probes, probe_table, train_probes

from helpers import feature_cache


@pytest.fixture()
def two_anchors(tmp_path):
    caches = {}
    for name, widths, seed in (("a", (4, 8, 4), 1), ("b", (6, 6), 2)):
        for split, n, data_seed in (("train", 1200, 0), ("val", 300, 5)):
            feature_cache(tmp_path / name / split, n, widths, 5, seed=seed, data_seed=data_seed, noise=0.6, split=split)
        caches[name] = (tmp_path / name / "train", tmp_path / name / "val")
    return caches


def test_probes_learn_separable_blocks(two_anchors, tmp_path):
    train = [two_anchors[k][0] for k in "ab"]
    val = [two_anchors[k][1] for k in "ab"]
    sets = train_probes(train, val, epochs=8, batch_size=32, progress=False)
    assert [s.name for s in sets] == ["a", "b"]
    assert [len(s.weights) for s in sets] == [3, 2]
    for s in sets:
        assert min(s.val_acc) > 90.0, s.val_acc
        assert s.weights[0].shape[0] == 5 and s.head_val_acc is not None
    table = probe_table(sets)
    assert "b1" in table and "val %" in table
    path = sets[1].save(tmp_path / "probes")
    loaded = load_probes(tmp_path / "probes", "b")
    assert path.suffix == ".safetensors"
    for w0, w1 in zip(sets[1].weights, loaded.weights):
        torch.testing.assert_close(w0, w1)
    assert loaded.val_acc == sets[1].val_acc


def test_grouped_probes_match_per_block_linear(two_anchors):
    readers = [CacheReader(two_anchors[k][0]) for k in "ab"]
    probes = JointProbes([r.manifest for r in readers])
    rows = [next(iter(r.batches(10))).torch()[0] for r in readers]
    out = probes(rows)
    assert out.shape == (10, 5, 5)
    k = 0
    for reader, per_block, r in zip(readers, probes.per_anchor(), rows):
        for e, (w, b) in zip(reader.manifest.block_entries, per_block):
            torch.testing.assert_close(out[:, k], r[:, e.offset:e.offset + e.width].float() @ w.T + b)
            k += 1


def test_pseudo_labels_follow_the_anchor_head(two_anchors):
    sets = train_probes([two_anchors["a"][0]], [two_anchors["a"][1]], labels="pseudo", epochs=2,
                        batch_size=64, progress=False)
    assert sets[0].labels == "pseudo"
    assert sets[0].head_val_acc == pytest.approx(100.0)  # the head agrees with itself


def test_caches_over_different_samples_are_refused(tmp_path):
    feature_cache(tmp_path / "a" / "train", 300, (4,), 3, seed=1, data_seed=0)
    feature_cache(tmp_path / "b" / "train", 300, (4,), 3, seed=2, data_seed=9)
    with pytest.raises(CacheError, match="different samples"):
        train_probes([tmp_path / "a" / "train", tmp_path / "b" / "train"], epochs=1, progress=False)


def test_training_is_reproducible(two_anchors):
    kw = dict(epochs=1, batch_size=128, progress=False, seed=3)
    a = train_probes([two_anchors["a"][0]], **kw)[0]
    b = train_probes([two_anchors["a"][0]], **kw)[0]
    for w0, w1 in zip(a.weights, b.weights):
        torch.testing.assert_close(w0, w1, rtol=0, atol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_probe_losses_equal_cross_entropy_per_probe(smoothing):
    import torch.nn.functional as F

    from klas.scoring.probes import probe_losses

    logits = torch.randn(33, 7, 10) * 4
    target = torch.randint(0, 10, (33, 7))
    want = sum(F.cross_entropy(logits[:, k], target[:, k], label_smoothing=smoothing) for k in range(7))
    torch.testing.assert_close(probe_losses(logits, target, smoothing), want)


def test_standardised_probes_are_saved_as_probes_of_the_raw_features(tmp_path):
    """The standardisation is folded into the weights: the saved (W, b) on raw features give the
    logits the model computes on standardised ones."""
    import torch

    from klas.cache import CacheReader
    from klas.scoring.probes import JointProbes

    feature_cache(tmp_path / "c", 200, (6, 9), 4, seed=1)
    reader = CacheReader(tmp_path / "c")
    model = JointProbes([reader.manifest])
    batch = next(reader.batches(200))
    rows = batch.torch()[0].float()
    model.standardise([[rows]])
    torch.nn.init.normal_(model.weights[0])
    logits = model([rows])  # [b, M, C]
    for k, (w, b) in enumerate(model.per_anchor()[0]):
        e = reader.manifest.block_entries[k]
        raw = rows[:, e.offset:e.offset + e.width]
        torch.testing.assert_close(raw @ w.T + b, logits[:, k], atol=1e-4, rtol=1e-4)


def test_standardised_probes_do_not_depend_on_the_features_offset_and_scale(tmp_path):
    """Pooled features of early blocks sit at other offsets and scales than late ones; a probe on
    standardised features learns the same whatever they are (here: the same block, shifted by 300
    and scaled by 50, gives the same accuracies), where a probe on raw features does not."""
    import numpy as np

    from klas.cache import CacheReader, CacheWriter
    from klas.scoring.probes import train_probes

    rows, labels = feature_cache(tmp_path / "c", 512, (8,), 4, seed=2, noise=0.5)
    m = CacheReader(tmp_path / "c").manifest
    scaled = rows.copy()
    scaled[:, :8] = 300.0 + 50.0 * scaled[:, :8]
    w = CacheWriter(tmp_path / "scaled", anchor=m.anchor, split="train", dtype="float32", blocks=m.blocks,
                    num_classes=4, num_samples=512, shard_rows=256, source=m.source, anchor_info=m.anchor_info)
    w.append(scaled.astype(np.float32), labels)
    w.finish()
    kw = dict(epochs=2, batch_size=64, lr=1e-2, progress=False)
    std = [train_probes([tmp_path / d], standardise=True, **kw)[0].train_acc[0] for d in ("c", "scaled")]
    raw = [train_probes([tmp_path / d], standardise=False, **kw)[0].train_acc[0] for d in ("c", "scaled")]
    assert abs(std[0] - std[1]) < 1.0, std
    assert abs(raw[0] - raw[1]) > 5.0, raw
