"""klas-budget: its rules as properties over random scores, predictions and budgets; its files."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import make_scores
from klas.errors import CacheError, UsageError
from klas.predictions import FORMAT, prediction_path, read_predictions, read_stored_predictions
from klas.selection.budget import (FRONTIER_Z, MAX_ERROR_RATIO, hop_candidates, budget_pair, hop_pays,
                                   predicted_frontier, prediction_noise, route_budget, select_budget, within_reach)
from klas.selection.select import anchor_chain


def _random_predictions(scores, seed: int, *, flat: bool = False, flops_range: str = "end-buckets") -> dict:
    """Per hop of the chain: a random top-1 per candidate and per anchor (`flat`: many ties)."""
    rng = random.Random(seed)
    chain = anchor_chain(scores)
    out = {}
    for f, g in zip(chain, chain[1:]):
        draw = (lambda: float(rng.choice([40, 60, 80]))) if flat else (lambda: rng.uniform(0, 100))
        out[(f, g)] = {"configurations": {(c.i, c.j): draw() for c in hop_candidates(scores, f, g, flops_range)},
                       "anchors": {f: draw(), g: draw()}}
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), stages=st.lists(st.integers(1, 4), min_size=2, max_size=4, unique=True),
       steps=st.integers(0, 5000), per_route=st.integers(1, 600), flat=st.booleans(),
       flops_range=st.sampled_from(["exclude", "end-buckets"]), ratio=st.sampled_from([1.0, 1.5, 2.0, 5.0, 1e6]),
       images=st.sampled_from([None, 30, 1000]))
def test_the_budget_rules_hold(seed, stages, steps, per_route, flat, flops_range, ratio, images):
    scores = make_scores(sorted(stages), seed)
    preds = _random_predictions(scores, seed, flat=flat, flops_range=flops_range)
    for p in preds.values():
        p["images"] = images
    sel = select_budget(scores, preds, total_steps=steps, min_route_steps=per_route, flops_range=flops_range,
                        max_error_ratio=ratio)
    room = route_budget(steps, per_route, len(sel.chain))
    assert room == max(1, steps // per_route - len(sel.chain))
    assert len(sel.selected) <= room and sel.notes["stitch_room"] == room
    margins_in, margins_out = [], []
    for pair in sel.pairs:
        p = preds[(pair.source, pair.target)]
        table, anchors = p["configurations"], p["anchors"]
        lo, hi = scores.anchor(pair.source).total_flops, scores.anchor(pair.target).total_flops
        reachable = [c for c in predicted_frontier(pair.configs, table, images)
                     if within_reach(table[(c.i, c.j)], anchors[pair.source], ratio)]
        if not hop_pays(pair.source, pair.target, anchors, images):
            assert pair.selected == []  # a hop whose cheaper anchor is better beyond the noise keeps nothing
            continue
        for c in pair.selected:
            # predicted error at most `ratio` times the cheaper anchor's
            assert 100 - table[(c.i, c.j)] <= ratio * (100 - anchors[pair.source]) + 1e-9
            assert (flops_range == "end-buckets" or lo <= c.flops <= hi) and c in pair.configs
            # no cheaper candidate of the hop is predicted more accurate beyond the predictions' noise
            # (at least as accurate when the predictions are exact), and none of equal FLOPs more accurate
            p_c = table[(c.i, c.j)]
            for d in pair.configs:
                p_d = table[(d.i, d.j)]
                if d.flops < c.flops and images is None:
                    assert p_d < p_c
                elif d.flops < c.flops:
                    assert p_d - p_c <= FRONTIER_Z * math.hypot(prediction_noise(p_c, images),
                                                                prediction_noise(p_d, images)) + 1e-9
                elif d.flops == c.flops:
                    assert p_d <= p_c
            margins_in.append(table[(c.i, c.j)] - anchors[pair.source])
        margins_out += [table[(c.i, c.j)] - anchors[pair.source] for c in reachable if c not in pair.selected]
    # the budget goes to the best predicted margins over the cheaper anchor, across hops
    if margins_in and margins_out:
        assert min(margins_in) >= max(margins_out)
    if not margins_in:  # nothing taken only when no paying hop has a candidate within reach
        assert not margins_out
    if ratio == 1e6 and flops_range == "end-buckets" \
            and any(hop_pays(f, g, p["anchors"], images) for (f, g), p in preds.items()):
        assert sel.selected  # every hop has candidates then, all within reach: a paying hop gets a stitch


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_sigma_cannot_move_a_configuration_in_or_out(seed, scale):
    scores = make_scores([2, 3], seed)
    preds = _random_predictions(scores, seed)
    before = select_budget(scores, preds, total_steps=1500, flops_range="end-buckets")
    theta = scores.theta_all.clone()
    for a in scores.anchors:  # Σ: each anchor's divergence from block j to j + 1
        for k in range(a.depth - 1):
            theta[a.offset + k, a.offset + k + 1] *= scale
    other = type(scores)(anchors=scores.anchors, theta_all=theta, floor=scores.floor, temperature=1.0, split="val",
                         caches={})
    after = select_budget(other, preds, total_steps=1500, flops_range="end-buckets")
    assert [(c.i, c.j) for c in after.selected] == [(c.i, c.j) for c in before.selected]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(0, 3000), more=st.integers(0, 3000))
def test_a_larger_budget_keeps_every_stitch_of_a_smaller_one(seed, steps, more):
    scores = make_scores([1, 3, 4], seed)
    preds = _random_predictions(scores, seed)
    small = {c.route.name for c in select_budget(scores, preds, total_steps=steps, flops_range="end-buckets").selected}
    large = {c.route.name for c in select_budget(scores, preds, total_steps=steps + more,
                                                 flops_range="end-buckets").selected}
    assert small <= large


def test_a_frontier_rises_with_flops_and_keeps_one_per_flops_value():
    scores = make_scores([2, 3], 0)
    configs = hop_candidates(scores, "a0", "a1", "end-buckets")
    table = {(c.i, c.j): float(k % 5) for k, c in enumerate(configs)}
    front = predicted_frontier(configs, table)
    assert [c.flops for c in front] == sorted({c.flops for c in front})
    values = [table[(c.i, c.j)] for c in front]
    assert values == sorted(set(values))
    assert table[(front[0].i, front[0].j)] == max(table[(c.i, c.j)] for c in configs if c.flops == front[0].flops)


def test_the_frontier_keeps_what_a_cheaper_configuration_beats_only_within_the_noise():
    scores = make_scores([2, 3], 0)
    configs = sorted(hop_candidates(scores, "a0", "a1", "end-buckets"), key=lambda c: (c.flops, c.i, c.j))
    by_flops = {}
    for c in configs:
        by_flops.setdefault(c.flops, c)
    cheap, dear = list(by_flops.values())[:2]
    table = {(c.i, c.j): 10.0 for c in configs}
    table[(cheap.i, cheap.j)], table[(dear.i, dear.j)] = 85.0, 83.0
    assert prediction_noise(85.0, 1000) == pytest.approx(100 * math.sqrt(0.85 * 0.15 / 1000))
    strict = predicted_frontier(configs, table)
    noisy = predicted_frontier(configs, table, 1000)  # 2 points apart, 1.96 SE of the difference is 3.2
    precise = predicted_frontier(configs, table, 100_000)  # ... and 0.3 here
    assert cheap in strict and dear not in strict
    assert cheap in noisy and dear in noisy
    assert cheap in precise and dear not in precise


def test_a_hop_without_a_better_costlier_anchor_says_so_and_keeps_nothing():
    scores = make_scores([2, 3], 1)
    preds = _random_predictions(scores, 1)
    (hop, p), = preds.items()
    p["anchors"] = {hop[0]: 90.0, hop[1]: 85.0}
    sel = select_budget(scores, preds, total_steps=1500, flops_range="end-buckets")
    assert sel.selected == []
    note = sel.notes["hops"][0]
    assert note["pays"] is False and "no stitch is worth training" in note["verdict"]
    assert json.loads(json.dumps(sel.to_json()))["notes"]["hops"][0]["pays"] is False


def test_stitches_predicted_beyond_reach_of_the_cheaper_anchor_get_no_room():
    scores = make_scores([2, 3], 4)
    preds = _random_predictions(scores, 4, flops_range="end-buckets")
    (hop, p), = preds.items()
    p["anchors"] = {hop[0]: 90.0, hop[1]: 95.0}  # error 10%: reach is 80% at the default ratio of 2
    configs = sorted(p["configurations"])
    for k, c in enumerate(configs):
        p["configurations"][c] = 79.9 - k * 0.01  # all beyond reach, the cheapest-first frontier aside
    sel = select_budget(scores, preds, total_steps=10**6, flops_range="end-buckets")
    note = sel.notes["hops"][0]
    assert sel.selected == [] and note["within_reach"] == 0 and note["pays"] is False
    assert "within reach" in note["verdict"] and note["reach_floor_top1_val"] == pytest.approx(80.0)
    assert MAX_ERROR_RATIO == sel.notes["max_error_ratio"] == 2.0
    p["configurations"][configs[0]] = 80.0  # exactly at the floor: within reach, and alone
    sel = select_budget(scores, preds, total_steps=10**6, flops_range="end-buckets")
    assert [(c.i, c.j) for c in sel.selected] == [configs[0]]
    loose = select_budget(scores, preds, total_steps=10**6, flops_range="end-buckets", max_error_ratio=3.0)
    assert {(c.i, c.j) for c in sel.selected} < {(c.i, c.j) for c in loose.selected}
    for bad in (0.5, float("nan"), True):
        with pytest.raises(UsageError, match="max_error_ratio"):
            select_budget(scores, preds, total_steps=1500, flops_range="end-buckets", max_error_ratio=bad)


def test_the_one_pair_form_scores_by_predicted_accuracy():
    scores = make_scores([2, 3], 2)
    preds = _random_predictions(scores, 2)
    (hop, p), = preds.items()
    p["anchors"] = {hop[0]: 10.0, hop[1]: 20.0}
    pair, notes = budget_pair(scores, *hop, p, 3, flops_range="end-buckets")
    assert len(pair.selected) == min(3, notes["frontier"]) and notes["pays"]
    best = sorted(predicted_frontier(pair.configs, p["configurations"]),
                  key=lambda c: -p["configurations"][(c.i, c.j)])[:3]
    assert {(c.i, c.j) for c in pair.selected} == {(c.i, c.j) for c in best}


def test_missing_predictions_are_refused_with_what_to_do():
    scores = make_scores([2, 3], 3)
    preds = _random_predictions(scores, 3)
    (hop, p), = preds.items()
    p["configurations"].pop(next(iter(p["configurations"])))
    with pytest.raises(UsageError, match="predict every candidate"):
        select_budget(scores, preds, total_steps=1000, flops_range="end-buckets")
    with pytest.raises(UsageError, match="no predictions for the hop"):
        select_budget(scores, {}, total_steps=1000)
    with pytest.raises(UsageError, match="min_route_steps >= 1"):
        route_budget(100, 0, 2)


def test_the_method_without_predictions_says_how_to_get_them():
    from klas.selection.methods import SelectOptions, run_method

    with pytest.raises(UsageError, match="klas run"):
        run_method("klas-budget", make_scores([2, 3], 4), SelectOptions())


def _doc(pair=("a0", "a1"), rows=(((1, 1), 3, 4),), anchors=None):
    anchors = anchors or {pair[0]: {"top1": 50.0, "correct": 1, "total": 2},
                          pair[1]: {"top1": 100.0, "correct": 2, "total": 2}}
    return {**FORMAT, "inputs": {"source": pair[0], "target": pair[1]}, "seconds": 1.5,
            "configurations": [{"i": i, "j": j, "top1": 100.0 * c / t, "correct": c, "total": t}
                               for (i, j), c, t in rows],
            "anchors": anchors}


def test_a_predictions_file_is_read_only_for_its_own_pair_and_counts(tmp_path):
    path = prediction_path(tmp_path, "a0", "a1")
    path.write_text(json.dumps(_doc()))
    got = read_predictions(path, [(1, 1)], pair=("a0", "a1"))
    assert got["configurations"] == {(1, 1): 75.0} and got["anchors"] == {"a0": 50.0, "a1": 100.0}
    assert got["images"] == 4  # what the frontier's noise is counted from
    bad = [
        (_doc(pair=("a1", "a0")), "does not hold the predictions of a0 -> a1"),
        (_doc(rows=(((2, 2), 1, 2),)), r"lacks configuration \(1, 1\)"),
        ({**_doc(), "seconds": "soon"}, "seconds"),
        ({**_doc(), "version": 2}, "not a klas predictions file"),
    ]
    forged = _doc()
    forged["configurations"][0]["top1"] = 99.0  # its counts say 75
    bad.append((forged, "malformed"))
    for doc, why in bad:
        path.write_text(json.dumps(doc))
        with pytest.raises(CacheError, match=why):
            read_predictions(path, [(1, 1)], pair=("a0", "a1"))
    path.write_text(json.dumps(_doc()))
    with pytest.raises(CacheError, match="other weights, samples or settings"):
        read_predictions(path, [(1, 1)], inputs={"source": "a0", "target": "a1", "seed": 1})


def test_a_stored_predictions_file_is_read_for_the_pair_it_records(tmp_path):
    path = tmp_path / "stored.json"
    path.write_text(json.dumps(_doc(rows=(((1, 1), 3, 4), ((2, 3), 1, 4)))))
    source, target, got = read_stored_predictions(path)
    assert (source, target) == ("a0", "a1")
    assert got["configurations"] == {(1, 1): 75.0, (2, 3): 25.0} and got["anchors"] == {"a0": 50.0, "a1": 100.0}
    for broken, why in (({**_doc(), "inputs": None}, "names no anchor pair"),
                        ({**_doc(), "inputs": {"source": "a0"}}, "names no anchor pair"),
                        ({**_doc(), "configurations": [{"i": "1", "j": 1}]}, "malformed")):
        path.write_text(json.dumps(broken))
        with pytest.raises(CacheError, match=why):
            read_stored_predictions(path)


def test_predicted_accuracy_is_the_least_squares_stitched_network_counted_on_the_images():
    from klas.anchors import load_anchor
    from klas.evaluation.predict import predict_pair
    from klas.stitches import Route
    from klas.stitching.stitch import StitchedSupernet

    f = load_anchor("cifar-resnet:8?pretrained=false&seed=1").eval()
    g = load_anchor("cifar-resnet:14?pretrained=false&seed=2").eval()
    gen = torch.Generator().manual_seed(0)
    calib = torch.randn(16, 3, 32, 32, generator=gen)
    val = [(torch.randn(3, 32, 32, generator=gen), int(k % 10)) for k in range(37)]
    configs = [(1, 1), (1, 2), (2, 3), (2, 4)]
    pred = predict_pair(f, g, configs, calib, val, seed=5, eval_batch=8, progress=False)
    for (i, j) in configs:
        net = StitchedSupernet([f, g], [Route(f.name, g.name, i, j)]).eval()
        net.init_stitches(calib, seed=5)
        with torch.no_grad():
            x = torch.stack([x for x, _ in val])
            y = torch.tensor([y for _, y in val])
            correct = int((net(x, 2).argmax(1) == y).sum())
        assert pred["configurations"][(i, j)]["correct"] == correct and pred["configurations"][(i, j)]["total"] == 37
    with torch.no_grad():
        want = int((f(torch.stack([x for x, _ in val])).argmax(1) == torch.tensor([y for _, y in val])).sum())
    assert pred["anchors"][f.name]["correct"] == want


def test_klas_budgets_own_settings_enter_its_fingerprints_alone(tmp_path):
    from klas.pipeline.config import stage_fingerprint, validate_config
    from klas.pipeline.run import method_settings

    raw = {"out": str(tmp_path), "anchors": ["cifar-resnet:8", "cifar-resnet:14"], "data": {"root": str(tmp_path)}}
    base = validate_config(raw)
    moved = validate_config({**raw, "select": {"budget_min_route_steps": 50, "predict_images": 10}})
    for stage in ("select", "finetune", "evaluate"):
        fp = lambda cfg, m: stage_fingerprint(cfg, stage, m, method_settings(cfg, m))  # noqa: E731
        assert fp(base, "klas") == fp(moved, "klas") == stage_fingerprint(base, stage, "klas")
        assert fp(base, "klas-budget") != fp(moved, "klas-budget")
    assert method_settings(base, "snnet-nearest") == {}


def test_klas_run_selects_with_the_budget_and_records_its_decisions(tmp_path, shapes_dir, capsys):
    import yaml

    from klas.pipeline.cli import main

    anchors = ["cifar-resnet:8?pretrained=false&seed=1", "cifar-resnet:14?pretrained=false&seed=2"]
    cfg = {"name": "tiny", "out": str(tmp_path / "out"), "anchors": anchors,
           "data": {"root": str(shapes_dir), "val_fraction": 0.25}, "extract": {"batch_size": 32},
           "probes": {"epochs": 2, "batch_size": 32},
           "select": {"compare": ["klas-budget", "snnet-nearest"], "budget_min_route_steps": 2, "predict_images": 20},
           "finetune": {"steps": 10, "batch_size": 8, "checkpoint_every": 5, "calibration_images": 16,
                        "protocols": ["snnet"]},
           "evaluate": {"batch_size": 64}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--quiet"]) == 0
    out = tmp_path / "out"
    sel = json.loads((out / "methods/klas-budget/selection/selection.json").read_text())
    notes = sel["notes"]
    assert notes["stitch_room"] == 10 // 2 - 2 and notes["stitches"] <= 3
    assert notes["prediction_seconds"] > 0 and len(notes["hops"]) == 1
    hop = notes["hops"][0]
    pred = json.loads((out / "predictions" / f"{hop['source']}__{hop['target']}.json").read_text())
    assert pred["inputs"]["calibration_images"] == 16 and all(r["total"] == 20 for r in pred["configurations"])
    picked = sorted((c["i"], c["j"]) for c in sel["pairs"][0]["selected"])
    assert picked == sorted((i, j) for i, j, _ in hop["picked_predicted_top1_val"])
    report = json.loads((out / "report/snnet/report.json").read_text())
    assert report["methods"]["klas-budget"]["stitches"] == len(picked)
    cost = report["selection_cost"]["klas-budget"]
    assert cost["prediction_seconds"] == notes["prediction_seconds"] and cost["finetune_seconds"] > 0
    assert cost["fraction_of_finetuning"] == pytest.approx(cost["prediction_seconds"] / cost["finetune_seconds"])
    assert "of its supernet's finetuning under snnet" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["run", str(path), "--quiet"]) == 0  # everything reused, the predictions included
    log = capsys.readouterr().out
    assert "running" not in log and "[predict]" not in log
    # `klas select` gives the same set from the run's scores and predictions
    args = ["select", "--scores", str(out / "cache/scores"), "--method", "klas-budget", "--out", str(tmp_path / "s")]
    assert main(args + ["--predictions", str(out / "predictions"), "--steps", "10",
                        "--budget-min-route-steps", "2"]) == 0
    again = json.loads((tmp_path / "s/selection-klas-budget.json").read_text())
    assert again["pairs"][0]["selected"] == sel["pairs"][0]["selected"] and "room for 3 stitches" in capsys.readouterr().out
    assert main(args) == 2
    assert "give --predictions and --steps" in capsys.readouterr().err
    assert main(args + ["--predictions", str(tmp_path / "nowhere"), "--steps", "10"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_the_reach_tool_counts_each_stitch_against_its_own_supernets_cheaper_anchor(tmp_path):
    """tools/reach_in_routes.py on a small hand-made predictions file and routes.csv."""
    import subprocess
    import sys
    from pathlib import Path

    pred = tmp_path / "a0__a1.json"
    # anchor a0: 900 of 1000 (error 10%); (1, 2) error 15% -> 1.5x, (2, 3) error 30% -> 3x
    pred.write_text(json.dumps(_doc(rows=(((1, 2), 850, 1000), ((2, 3), 700, 1000)),
                                    anchors={"a0": {"top1": 90.0, "correct": 900, "total": 1000},
                                             "a1": {"top1": 95.0, "correct": 950, "total": 1000}})))
    routes = tmp_path / "routes.csv"
    routes.write_text("method,route,source,target,i,j,flops,params,top1,gamma,on_frontier\n"
                      "m,a0,a0,a0,3,3,10,1,80.0,,1\nm,a1,a1,a1,4,4,20,1,90.0,,1\n"
                      "m,s1,a0,a1,1,2,15,1,81.5,,1\nm,s2,a0,a1,2,3,12,1,77.0,,0\n"
                      "n,a0,a0,a0,3,3,10,1,82.0,,1\nn,s1,a0,a1,1,2,15,1,81.0,,0\n")
    tool = Path(__file__).parents[1] / "tools/reach_in_routes.py"
    out = subprocess.run([sys.executable, str(tool), str(pred), str(routes)], capture_output=True, text=True,
                         check=True).stdout
    assert "(1,2) 1.50:+1.5" in out and "(2,3) 3.00:-3.0" in out and "(1,2) 1.50:-1.0" in out
    assert "ratio <= 2: 2 stitches, 1 at or above the anchor, gap -1.0 to +1.5" in out
    assert "ratio >  2: 1 stitches, 0 at or above the anchor, gap -3.0 to -3.0" in out
    loose = subprocess.run([sys.executable, str(tool), str(pred), str(routes), "--ratio", "3"], capture_output=True,
                           text=True, check=True).stdout
    assert "ratio <= 3: 3 stitches" in loose


def test_the_selection_cost_has_no_fraction_where_the_supernet_trained_nothing():
    from klas.pipeline.run import cost_against_finetuning

    assert cost_against_finetuning(30.0, 120.0, trained_nothing=False)["fraction_of_finetuning"] == pytest.approx(0.25)
    # no stitch with the anchors frozen: a fraction of ~0 s of finetuning would read as thousands of percent
    idle = cost_against_finetuning(5.0, 0.35, trained_nothing=True)
    assert idle["fraction_of_finetuning"] is None and idle["trained_nothing"] and idle["prediction_seconds"] == 5.0
    for bad in (None, True, -1.0, "5"):
        assert cost_against_finetuning(bad, 120.0, trained_nothing=False)["fraction_of_finetuning"] is None
    assert cost_against_finetuning(30.0, None, trained_nothing=False)["fraction_of_finetuning"] is None


def test_a_hop_stops_only_when_its_cheaper_anchor_is_better_beyond_the_noise():
    names = ("cheap", "costly")
    # 1,000 images near 94%: one top-1 has an SE of 0.75 points, 1.96 SE of a difference 2.1
    assert hop_pays(*names, {"cheap": 94.1, "costly": 93.9}, 1000)  # within the noise: rule 5 decides
    assert hop_pays(*names, {"cheap": 95.0, "costly": 95.0}, 1000)
    assert not hop_pays(*names, {"cheap": 95.0, "costly": 92.0}, 1000)  # 3 points: beyond it
    assert hop_pays(*names, {"cheap": 95.0, "costly": 92.0}, 10)  # 10 images say nothing
    # counts not known: strictly more accurate, as exact numbers
    assert not hop_pays(*names, {"cheap": 94.1, "costly": 93.9})
    assert not hop_pays(*names, {"cheap": 95.0, "costly": 95.0})
    assert hop_pays(*names, {"cheap": 95.0, "costly": 95.1})


def test_the_rule_3_tool_tells_both_versions_apart(tmp_path):
    """tools/hops_in_predictions.py on a hand-made predictions file whose anchors are level on D_v."""
    import subprocess
    import sys
    from pathlib import Path

    pred = tmp_path / "a0__a1.json"
    pred.write_text(json.dumps(_doc(rows=(((1, 2), 850, 1000), ((2, 3), 700, 1000)),
                                    anchors={"a0": {"top1": 94.1, "correct": 941, "total": 1000},
                                             "a1": {"top1": 93.9, "correct": 939, "total": 1000}})))
    tool = Path(__file__).parents[1] / "tools/hops_in_predictions.py"
    out = subprocess.run([sys.executable, str(tool), str(pred)], capture_output=True, text=True, check=True).stdout
    # 0.2 points on 1,000 images: the first version stops, the one within the noise pays; floor 88.2%
    assert "rule 3 first version stops, within the noise pays; 0 of 2 candidates within reach (ratio 2)" in out
    wide = subprocess.run([sys.executable, str(tool), str(pred), "--ratio", "3"], capture_output=True, text=True,
                          check=True).stdout
    assert "1 of 2 candidates within reach (ratio 3)" in wide  # floor 82.3%: (1, 2)'s 85% is in
