"""Joint probe training from caches."""
from __future__ import annotations

import pytest
import torch

from klas.cache import CacheReader
from klas.errors import CacheError
from klas.probes import JointProbes, load_probes, probe_table, train_probes

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

    from klas.probes import probe_losses

    logits = torch.randn(33, 7, 10) * 4
    target = torch.randint(0, 10, (33, 7))
    want = sum(F.cross_entropy(logits[:, k], target[:, k], label_smoothing=smoothing) for k in range(7))
    torch.testing.assert_close(probe_losses(logits, target, smoothing), want)
