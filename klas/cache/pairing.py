"""Checks for caches used together: the same samples in the same order, the same classes, and
probes that belong to the weights a cache was made with.

Every stage that pairs caches (probes: D_t caches of several anchors and their D_v caches;
scores: D_v caches of several anchors; the metric baselines) goes through `check_same_samples`,
so that a cache made from other samples (another seed, another limit) with the same count is
refused instead of silently mispairing rows.
"""
from __future__ import annotations

from typing import Sequence

from klas.errors import CacheError

__all__ = ["check_same_samples", "check_same_weights", "check_held_out", "split_settings", "recorded", "SPLIT_KEYS"]

# what decides which images of a data root fall into D_t and which into D_v
SPLIT_KEYS = ("data", "split_of", "val_fraction", "seed")


def recorded(reader, what: str, value):
    """`value` (a fact read from `reader`'s manifest), or CacheError when the manifest lacks it."""
    if value is None:
        raise CacheError(f"{reader.dir / 'manifest.json'} does not record {what} (written by an older klas, or "
                         "edited); extract this cache again")
    return value


def check_same_samples(readers: Sequence, split: str | None = None) -> None:
    """CacheError unless every cache holds the same samples in the same order, with the same
    class names (and, when `split` is given, is that split)."""
    if not readers:
        return
    first = readers[0]
    want = recorded(first, "the identity of its samples", first.manifest.samples_digest)
    classes = recorded(first, "its class names", first.manifest.class_names)
    for r in readers:
        m = r.manifest
        if split is not None and m.split != split:
            raise CacheError(f"{r.dir} holds the {m.split!r} split, not {split!r}: extract the {split} split into it "
                             "again")
        if recorded(r, "the identity of its samples", m.samples_digest) != want:
            raise CacheError(f"{r.dir} and {first.dir} cache different samples (another data root, seed, "
                             "val_fraction or limit); extract both from the same data settings")
        if recorded(r, "its class names", m.class_names) != classes:
            raise CacheError(f"{r.dir} and {first.dir} were extracted with different class names; extract both "
                             "from the same dataset")


def check_same_weights(reader, weights: str | None, whose: str) -> None:
    """CacheError unless `whose` (probes, another split's cache) was made from the weights that
    `reader`'s cache was extracted with."""
    have = recorded(reader, "the digest of its anchor's weights", reader.manifest.weights_digest)
    if weights != have:
        raise CacheError(f"{whose} belong(s) to other weights of {reader.manifest.anchor!r} than {reader.dir} "
                         "(the checkpoint changed since); extract again and re-run `klas probes`")


def split_settings(source: dict) -> dict:
    """The settings of a cache's `source` that decide which images form its D_t / D_v split."""
    return {k: source[k] for k in SPLIT_KEYS if k in source}


def check_held_out(train_split: dict, train_where: str, val_reader) -> None:
    """CacheError unless the D_v cache of `val_reader` was split from the data with the same
    `SPLIT_KEYS` as the D_t samples described by `train_split` (another seed or val_fraction would
    put D_v samples into D_t). A cache of any other split (the test set) is held out by construction."""
    m = val_reader.manifest
    if m.split != "val":
        return
    val = split_settings(m.source)
    differ = [k for k in SPLIT_KEYS if (k in train_split or k in val) and train_split.get(k) != val.get(k)]
    if differ:
        said = ", ".join(f"{k} {val.get(k)!r} against {train_split.get(k)!r}" for k in differ)
        raise CacheError(f"{val_reader.dir} was split from the data otherwise than {train_where} ({said}), so its "
                         "samples can lie in D_t; extract D_t and D_v with the same data, seed and val_fraction")
