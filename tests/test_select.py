"""Selection on random Θ tables: the τ / argmin / coverage rules, the grid rule, the anchor chain."""
from __future__ import annotations

import itertools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from klas.errors import UsageError
from klas.scoring.scores import AnchorEntry, Scores
from klas.anchors.base import PartCounts
from klas.selection.select import _bucketise, _keep, anchor_chain, configurations, select, select_pair
from klas.stitches import stitch_flops

from helpers import make_scores


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), tau=st.floats(0.01, 0.5), stages=st.lists(st.integers(1, 4), min_size=2, max_size=4, unique=True),
       flops_range=st.sampled_from(["exclude", "end-buckets"]))
def test_selection_rules_hold(seed, tau, stages, flops_range):
    stages = sorted(stages)
    scores = make_scores(stages, seed)
    try:
        sel = select(scores, tau=tau, flops_range=flops_range)
    except UsageError as e:  # only when a hop has no configuration within its anchors' FLOPs
        assert flops_range == "exclude" and "lies within the anchors' FLOPs" in str(e)
        return
    for pair in sel.pairs:
        lo, hi = scores.anchor(pair.source).total_flops, scores.anchor(pair.target).total_flops
        inside = [c for c in pair.configs if lo <= c.flops <= hi]
        assert flops_range == "end-buckets" or inside == pair.configs  # outside configurations are no candidates
    assert sel.chain[0] == "a0" and sel.chain[-1] == f"a{len(stages) - 1}"
    for pair in sel.pairs:
        g = scores.anchor(pair.target)
        selected = set(pair.selected)
        by_bucket = {}
        for c in pair.configs:
            by_bucket.setdefault(c.bucket, []).append(c)
            f_grid = scores.anchor(pair.source).grids[c.i - 1]
            assert f_grid == g.grids[c.j - 1]  # grid rule
        for b, members in by_bucket.items():
            best = min(members, key=lambda c: c.gamma)
            assert any(c.gamma == best.gamma for c in selected if c.bucket == b)  # argmin kept
        for c in pair.selected:
            t = pair.tau[c.bucket]
            assert c.gamma <= t + 1e-12 or c.gamma == min(m.gamma for m in by_bucket[c.bucket]) or \
                c.j in pair.uncovered_added
        assert {c.j for c in pair.selected} == {c.j for c in pair.configs}  # every target block covered


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_kept_set_does_not_depend_on_listing_order(seed):
    scores = make_scores([2, 3], seed)
    configs = configurations(scores, "a0", "a1")
    shuffled = configs[:]
    random.Random(seed).shuffle(shuffled)
    lo, hi = scores.anchor("a0").total_flops, scores.anchor("a1").total_flops
    a, _ = _keep(_bucketise(configs, lo, hi, 5)[0], 5, 0.05, "relative")
    b, _ = _keep(_bucketise(shuffled, lo, hi, 5)[0], 5, 0.05, "relative")
    assert set(a) == set(b)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6))
def test_anchor_chain_is_the_minimax_chain(seed, n):
    scores = make_scores([1 + k for k in range(n)], seed)
    theta = scores.last_block()
    best = None
    for r in range(n - 1):
        for middle in itertools.combinations(range(1, n - 1), r):
            chain = [0, *middle, n - 1]
            key = (max(float(theta[a, b]) for a, b in zip(chain, chain[1:])), len(chain))
            best = min(best, (key, chain)) if best else (key, chain)
    assert anchor_chain(scores) == [f"a{k}" for k in best[1]]


def test_stitch_flops_and_config_flops():
    assert stitch_flops(16, 32, (8, 8)) == 16 * 32 * 64  # multiply-accumulates at 8x8 positions
    scores = make_scores([1, 2], 0)
    c = next(c for c in configurations(scores, "a0", "a1") if (c.i, c.j) == (1, 2))
    f, g = scores.anchor("a0"), scores.anchor("a1")
    assert c.flops == 500 + f.flops.blocks[0] + stitch_flops(16, 16, (8, 8)) + sum(g.flops.blocks[2:]) + 100


def test_bad_requests():
    scores = make_scores([1, 2], 0)
    with pytest.raises(ValueError, match="tau must be positive"):
        select(scores, tau=0)
    with pytest.raises(ValueError, match="buckets"):
        select(scores, buckets=0)
    mismatched = make_scores([1, 2], 0)
    mismatched.anchors[1] = AnchorEntry(**{**mismatched.anchors[1].__dict__, "grids": [[7, 7]] * 6})
    with pytest.raises(ValueError, match="grids never match"):
        select_pair(mismatched, "a0", "a1")


def _entry(name, grids, widths=None):
    widths = widths or [8] * len(grids)
    return AnchorEntry(name=name, spec=name, depth=len(grids), flops=PartCounts(1, (1,) * len(grids), 1),
                       widths=widths, grids=grids, offset=0)


def test_snnet_paired_plain_vit():
    from klas.selection.select import snnet_nearest_pairs

    f = _entry("f", [[197]] * 4)
    g = _entry("g", [[197]] * 4)
    # every (a, b) with |a - b| <= 1, as (i, j) = (a + 1, b), b = 0 kept for plain models
    want = {(a + 1, b) for a in range(4) for b in range(4) if abs(a - b) <= 1}
    assert set(snnet_nearest_pairs(f, g)) == want


def test_snnet_unpaired_uses_nearest_interpolation():
    from klas.selection.select import snnet_nearest_pairs

    f = _entry("f", [[197]] * 2)
    g = _entry("g", [[197]] * 4)
    # nearest interpolation of [0, 1] to length 4 is [0, 0, 1, 1]: keep (e[k], k) with e[k] < k
    assert snnet_nearest_pairs(f, g) == [(1, 1), (2, 2), (2, 3)]


def test_snnet_hierarchical_works_per_stage_and_drops_b0():
    from klas.selection.select import snnet_nearest_pairs

    f = _entry("f", [[8, 8]] * 3 + [[4, 4]] * 3)
    g = _entry("g", [[8, 8]] * 3 + [[4, 4]] * 3)
    # paired within a stage keeps a < b only: (0,1), (1,2) per stage; stage 2 offsets by 3
    assert snnet_nearest_pairs(f, g, stage_skips=False) == [(1, 1), (2, 2), (4, 4), (5, 5)]
    # SN-Net's code stitches only the first stage of a 2-stage model (all but the last)
    assert snnet_nearest_pairs(f, g) == [(1, 1), (2, 2)]


@pytest.mark.parametrize("stages, stitched", [(1, [0]), (2, [0]), (3, [0, 1]), (4, [1, 2]), (5, [1, 2, 3])])
def test_snnet_stitches_the_stages_its_code_stitches(stages, stitched):
    """METHOD.md §7: 4-stage models their middle two stages, 3-stage models (CIFAR ResNets, LeViT) all
    but the last, plain models every block."""
    from klas.selection.select import snnet_nearest_pairs, snnet_stitched_stages

    assert snnet_stitched_stages(stages) == stitched
    grids = [[2 ** (8 - s)] * 2 for s in range(stages) for _ in range(2)]
    f, g = _entry("f", grids), _entry("g", grids)
    got = snnet_nearest_pairs(f, g)
    assert {(i - 1) // 2 for i, _ in got} == set(stitched)  # the stage of each front block a = i - 1
    assert {j // 2 for _, j in got} == set(stitched)


def test_snnet_selection_runs_on_scores():
    from klas.selection.select import select_snnet_nearest

    scores = make_scores([1, 2, 3], 0)
    sel = select_snnet_nearest(scores)
    assert sel.chain == ["a0", "a1", "a2"] and len(sel.pairs) == 2
    for pair in sel.pairs:
        assert pair.selected and all(c.flops > 0 for c in pair.selected)


def test_klas_on_snnet_chain_is_klas_selection_over_every_neighbouring_pair():
    """The Fig. 6 control: the same block selection as KLAS, on SN-Net's chain."""
    from klas.selection.methods import SelectOptions, run_method
    from klas.selection.select import select

    scores = make_scores([1, 2, 3], 0)
    control = run_method("klas-snnet-chain", scores, SelectOptions(tau=0.05, chain_rule="minimax",
                                                                    flops_range="end-buckets"))
    assert control.chain == ["a0", "a1", "a2"] and control.method == "klas-snnet-chain"
    same = select(scores, tau=0.05, chain_rule="nearest", flops_range="end-buckets")
    assert [c for p in control.pairs for c in p.selected] == [c for p in same.pairs for c in p.selected]


def test_a_saved_selection_reads_back_to_the_same_document(tmp_path):
    """read_selection gives a Selection whose JSON is the file's, NaN scores and thresholds included."""
    import json

    from klas.files import write_json_atomic
    from klas.selection.select import read_selection, select, select_snnet_nearest

    scores = make_scores([1, 2, 3], 0)
    for sel in (select(scores, tau=0.05, flops_range="end-buckets"), select_snnet_nearest(scores)):
        path = tmp_path / f"{sel.method}.json"
        write_json_atomic(path, sel.to_json())
        back = read_selection(path)
        assert json.loads(json.dumps(back.to_json())) == json.loads(path.read_text())
        assert [c.route.name for c in back.selected] == [c.route.name for c in sel.selected]


@pytest.mark.parametrize("size", [1, 3, 7, 40, 10_000])
def test_size_matched_takes_every_buckets_best_before_any_second(size):
    from klas.selection.select import size_matched

    scores = make_scores([2, 3], 1)
    sel = select(scores, tau=0.05, flops_range="end-buckets")
    matched = size_matched(sel, size)
    picked = [c for p in matched.pairs for c in p.selected]
    every = [c for p in sel.pairs for c in p.configs]
    assert len(picked) == min(size, len(every)) and len(set(picked)) == len(picked)
    buckets = {}
    for p in sel.pairs:
        for c in p.configs:
            buckets.setdefault((p.source, c.bucket), []).append(c)
    counts = [sum(c in picked for c in cs) for cs in buckets.values()]
    assert max(counts) - min(counts) <= 1 or min(counts) == min(len(cs) for cs in buckets.values())
    for cs in buckets.values():  # within a bucket, the kept ones are its lowest Γ
        kept = sorted(c.gamma for c in cs if c in picked)
        assert kept == sorted(c.gamma for c in cs)[:len(kept)]


def test_klas_size_matched_is_as_large_as_snnets_set():
    from klas.selection.methods import SelectOptions, run_method
    from klas.selection.select import select_snnet_nearest

    scores = make_scores([2, 3, 4], 2)
    options = SelectOptions(flops_range="end-buckets")
    matched = run_method("klas-size-matched", scores, options)
    assert matched.method == "klas-size-matched"
    assert len(matched.selected) == len(select_snnet_nearest(scores).selected)


def test_klas_omega_scores_by_omega_alone_and_otherwise_selects_as_klas():
    """The Σ ablation: each configuration's score is its Ω (Σ still recorded), and selection with
    those scores equals KLAS's selection run on a Σ of ones."""
    from klas.selection.methods import SelectOptions, get_method, run_method

    scores = make_scores([2, 4], 5)
    options = SelectOptions(flops_range="end-buckets")
    omega = run_method("klas-omega", scores, options)
    assert omega.method == "klas-omega"
    for pair in omega.pairs:
        for c in pair.configs:
            assert c.gamma == c.omega and c.sigma == pytest.approx(float(scores.sigma(pair.target)[c.j - 1]))
        # the recovery test's one-pair form scores and picks the same way
        alone = get_method("klas-omega").pair(scores, pair.source, pair.target, options)
        assert alone["scores"] == {(c.i, c.j): c.omega for c in pair.configs}
        assert alone["picks"] == [(c.i, c.j) for c in pair.selected]
    # the same selection from KLAS itself once Σ is 1 everywhere: rewrite Θ_{g_j, g_j+1} to 1
    flat = make_scores([2, 4], 5)
    for a in flat.anchors:
        for j in range(a.depth - 1):
            flat.theta_all[a.offset + j, a.offset + j + 1] = 1.0
    klas = run_method("klas", flat, options)
    assert [[(c.i, c.j) for c in p.selected] for p in omega.pairs] == [[(c.i, c.j) for c in p.selected] for p in klas.pairs]
    # and Σ matters: on the original scores KLAS keeps another set
    assert [[(c.i, c.j) for c in p.selected] for p in run_method("klas", scores, options).pairs] != \
        [[(c.i, c.j) for c in p.selected] for p in omega.pairs]


def test_a_metric_method_without_the_extraction_output_says_what_to_give_in_both_forms():
    from klas.errors import UsageError
    from klas.selection.methods import SelectOptions, get_method, run_method

    scores = make_scores([2, 4], 5)
    pair = scores.anchors[0].name, scores.anchors[1].name
    with pytest.raises(UsageError, match="reads the pooled features: give the extraction output"):
        run_method("cka", scores, SelectOptions())
    with pytest.raises(UsageError, match="reads the pooled features: give the extraction output"):
        get_method("cka").pair(scores, *pair, SelectOptions())


def test_the_rule_names_the_config_offers_are_the_rules_the_selection_has():
    from klas.limits import CHAIN_RULE_NAMES
    from klas.selection.select import CHAIN_RULES

    assert tuple(CHAIN_RULES) == CHAIN_RULE_NAMES
