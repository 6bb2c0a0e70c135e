"""The recovery test: the good set and each method's scores on hand-made cases, and `klas recovery`
end to end on small random ResNets (every configuration evaluated, the report agrees with its own
CSV, a rerun trains nothing, one lost result is retrained to the same numbers)."""
from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from klas.pipeline.cli import main
from klas.evaluation.recovery import RecoverySettings, good_set, recovery_report, score_method
from klas.evaluation.stats import mean_interval


def test_good_set_is_each_buckets_best_and_those_within_delta():
    acc = {(1, 1): 80.0, (1, 2): 79.6, (2, 1): 79.4, (2, 2): 70.0, (3, 3): 60.0}
    bucket = {(1, 1): 0, (1, 2): 0, (2, 1): 0, (2, 2): 1, (3, 3): 1}
    assert good_set(acc, bucket, 0.5) == {(1, 1), (1, 2), (2, 2)}
    assert good_set(acc, bucket, 0.0) == {(1, 1), (2, 2)}


def test_score_method_counts_hits_losses_and_within_bucket_rank_correlation():
    acc = {(1, 1): 80.0, (1, 2): 79.0, (2, 1): 75.0, (2, 2): 70.0, (3, 3): 60.0, (3, 4): 65.0}
    bucket = {(1, 1): 0, (1, 2): 0, (2, 1): 0, (2, 2): 1, (3, 3): 1, (3, 4): 1}
    good = good_set(acc, bucket, 0.5)  # {(1, 1), (2, 2)}
    # lower score for higher accuracy inside each bucket: a perfect within-bucket ranking
    score = {(1, 1): 0.1, (1, 2): 0.2, (2, 1): 0.3, (2, 2): 0.1, (3, 3): 0.9, (3, 4): 0.5}
    s = score_method([(1, 1), (3, 3), (9, 9)], acc, bucket, good, score)
    assert s["picks"] == 2 and s["picks_outside_ground_truth"] == 1 and s["good_found"] == 1
    assert s["precision"] == 0.5 and s["recall"] == 0.5
    assert s["mean_points_lost_per_pick"] == pytest.approx((0.0 + 10.0) / 2)
    assert s["spearman_score_top1_within_buckets"] == pytest.approx(-1.0)


def test_the_frontier_holds_the_configurations_that_every_cheaper_route_trails():
    from klas.evaluation.recovery import frontier_of, frontier_scores

    anchors = [{"flops": 10, "top1": 80.0}, {"flops": 100, "top1": 90.0}]
    acc = {(1, 1): 79.0, (1, 2): 82.0, (2, 2): 81.0, (3, 3): 85.0, (3, 4): 85.0, (4, 4): 95.0}
    flops = {(1, 1): 20, (1, 2): 30, (2, 2): 40, (3, 3): 50, (3, 4): 60, (4, 4): 90}
    # (1, 1) trails the cheaper anchor, (2, 2) trails (1, 2), (3, 4) only ties (3, 3): off the frontier
    assert frontier_of(acc, flops, anchors) == {(1, 2), (3, 3), (4, 4)}
    assert frontier_of(acc, flops, [{"flops": 10, "top1": 99.0}, anchors[1]]) == set()
    # exact twins (equal FLOPs, equal accuracy) are both on it; a costlier equal is not
    assert frontier_of({(1, 1): 85.0, (2, 2): 85.0}, {(1, 1): 50, (2, 2): 50}, anchors) == {(1, 1), (2, 2)}
    assert frontier_of({(1, 1): 85.0, (2, 2): 85.0}, {(1, 1): 50, (2, 2): 51}, anchors) == {(1, 1)}
    s = frontier_scores([(1, 1), (3, 3), (3, 4), (9, 9)], acc, {(1, 2), (3, 3), (4, 4)}, 80.0)
    assert (s["frontier_found"], s["frontier"], s["above_cheaper_anchor"]) == (1, 3, 2)
    assert s["frontier_recall"] == pytest.approx(1 / 3)
    assert frontier_scores([(1, 1)], acc, set(), 80.0)["frontier_recall"] is None


def test_mean_interval_uses_the_t_distribution():
    m = mean_interval([1.0, 2.0, 3.0])
    assert m["mean"] == 2.0 and m["n"] == 3
    assert m["high"] - m["mean"] == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-4)  # t(2) quantile 4.3027
    assert mean_interval([5.0])["low"] is None


def test_random_picks_are_reported_as_mean_and_interval():
    results = {(i, j): {"i": i, "j": j, "flops": 100 * i + j, "top1": 50.0 + i + j, "top1_init": 40.0}
               for i in (1, 2) for j in (1, 2)}
    report = recovery_report(results, {"random": {"draws": [[(1, 1)], [(2, 2)]]}}, RecoverySettings(delta=0.0),
                             100.0, 300.0, 2)
    r = report["methods"]["random"]
    assert r["seeds"] == 2 and r["precision"]["n"] == 2
    assert {c["bucket"] for c in report["configurations"]} == {0, 1}


@pytest.fixture(scope="module")
def recovered(tmp_path_factory, shapes_dir):
    root = tmp_path_factory.mktemp("recovery")
    cfg = {"out": str(root / "out"), "anchors": ["cifar-resnet:14?pretrained=false&seed=1",
                                                 "cifar-resnet:26?pretrained=false&seed=2"],
           "data": {"root": str(shapes_dir), "test_limit": 40},
           "extract": {"batch_size": 32, "shard_rows": 64}, "probes": {"epochs": 2},
           "recovery": {"steps": 6, "batch_size": 8, "calibration_images": 16, "random_seeds": 4,
                        "methods": ["klas", "snnet-nearest", "cka", "random", "klas-budget"]},
           "finetune": {"steps": 500}, "select": {"budget_min_route_steps": 100, "predict_images": 30}}
    path = root / "rec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["recovery", str(path), "--pair", "cifar-resnet26,cifar-resnet14", "--quiet"]) == 0
    return path, root / "out/recovery/cifar-resnet14__cifar-resnet26"


def test_recovery_evaluates_every_configuration_in_range_and_scores_every_method(recovered):
    from klas.scoring.scores import load_scores
    from klas.selection.select import configurations, in_flops_range

    cfg_path, out = recovered
    report = json.loads((out / "recovery.json").read_text())
    scores = load_scores(cfg_path.parent / "out/cache/scores")
    lo, hi = (scores.anchor(n).total_flops for n in ("cifar-resnet14", "cifar-resnet26"))
    want = {(c.i, c.j) for c in in_flops_range(configurations(scores, "cifar-resnet14", "cifar-resnet26"), lo, hi)}
    got = {(c["i"], c["j"]) for c in report["configurations"]}
    assert got == want and len(got) >= 10
    assert all(lo <= c["flops"] <= hi and c["total"] == 40 for c in report["configurations"])
    snnet = report["methods"]["snnet-nearest"]["picks"]
    assert set(report["methods"]) == {"klas", "snnet-nearest", "cka", "random", "klas-budget", f"klas-budget@{snnet}"}
    assert report["wall_seconds"]["training_and_evaluation"] > 0
    # the anchors on the same test images bound the frontier; every method is scored against it
    assert set(report["anchors"]) == {"cifar-resnet14", "cifar-resnet26"}
    assert all(a["total"] == 40 and a["top1"] == pytest.approx(100 * a["correct"] / 40) for a in report["anchors"].values())
    routes = [(c["flops"], c["top1"], (c["i"], c["j"])) for c in report["configurations"]]
    routes += [(a["flops"], a["top1"], None) for a in report["anchors"].values()]
    on = {tuple(c) for c in report["frontier"]}
    for v, a, c in routes:
        if c is not None:
            assert (c in on) == all(b < a for w, b, d in routes if d != c and w <= v)
    for m in ("klas", "snnet-nearest", "cka"):
        s = report["methods"][m]
        assert s["frontier"] == len(on) and s["frontier_found"] == len({tuple(p) for p in s["picked"]} & on)
        share = s["random_sets_at_least_as_much_frontier"]
        assert share is None if s["picks"] == 0 else 0 < share <= 1
    # the run's seconds per stage, the recovery's training last, as a run records them
    timings = json.loads((cfg_path.parent / "out/timings.json").read_text())
    assert [r["stage"] for r in timings["stages"]] == ["extract", "probes", "score", "recovery"]
    assert timings["stages"][-1]["seconds"] == pytest.approx(report["wall_seconds"]["training_and_evaluation"])
    assert timings["total_seconds"] == pytest.approx(sum(r["seconds"] for r in timings["stages"]))
    # the summary agrees with the CSV it wrote
    rows = list(csv.DictReader(open(out / "recovery.csv")))
    good = {(int(r["i"]), int(r["j"])) for r in rows if r["good"] == "1"}
    assert good == {tuple(c) for c in report["good_set"]}
    for m in ("klas", "snnet-nearest", "cka"):
        picked = {(int(r["i"]), int(r["j"])) for r in rows if r[f"picked_{m}"] == "1"}
        s = report["methods"][m]
        assert s["picks"] == len(picked) and s["good_found"] == len(picked & good)
        assert s["recall"] == pytest.approx(len(picked & good) / len(good))
    assert (out / "recovery.png").stat().st_size > 5000


def test_klas_budget_picks_from_its_predictions_within_its_budget(recovered):
    from klas.predictions import read_predictions
    from klas.selection.budget import ahead_beyond_noise, hop_pays

    cfg_path, out = recovered
    report = json.loads((out / "recovery.json").read_text())
    evaluated = [(c["i"], c["j"]) for c in report["configurations"]]
    pred = read_predictions(cfg_path.parent / "out/predictions/cifar-resnet14__cifar-resnet26.json", evaluated,
                            pair=("cifar-resnet14", "cifar-resnet26"))
    assert all(0 <= v <= 100 for v in pred["configurations"].values())
    picks = {tuple(c) for c in report["methods"]["klas-budget"]["picked"]}
    room = 500 // 100 - 2  # finetune.steps // budget_min_route_steps - the two anchors' routes
    # rule 3: the hop stops only when the cheaper anchor is better beyond the noise of the two D_v counts
    pays = hop_pays("cifar-resnet14", "cifar-resnet26", pred["anchors"], pred["images"])
    assert len(picks) == (min(room, len(picks)) if pays else 0) <= room
    table = pred["configurations"]
    flops = {(c["i"], c["j"]): c["flops"] for c in report["configurations"]}
    for c in picks:  # each pick on the predicted frontier: nothing cheaper predicted better beyond the noise
        assert not any(ahead_beyond_noise(table[d], table[c], pred["images"]) for d in evaluated if flops[d] < flops[c])
    # the same rules with room for SN-Net's picks: the same ranking, so its own picks and maybe more
    n = report["methods"]["snnet-nearest"]["picks"]
    sized = {tuple(c) for c in report["methods"][f"klas-budget@{n}"]["picked"]}
    assert len(sized) <= n and ((picks <= sized) if n >= room else (sized <= picks))
    assert len(sized) == min(n, len(picks)) or (n > room and len(picks) == room)


def test_recovery_resumes_per_configuration(recovered, capsys):
    cfg_path, out = recovered
    files = sorted((out / "configurations").glob("*.json"))
    before = {p.name: json.loads(p.read_text()) for p in files}
    files[3].unlink()  # one configuration's result lost: only it is trained again, to the same numbers
    capsys.readouterr()
    assert main(["recovery", str(cfg_path), "--pair", "cifar-resnet14,cifar-resnet26", "--quiet"]) == 0
    log = capsys.readouterr().out
    assert f"{len(files) - 1} of {len(files)} configurations done; training 1" in log
    after = {p.name: json.loads(p.read_text()) for p in sorted((out / "configurations").glob("*.json"))}
    for name in before:
        for key in ("top1", "top1_init", "correct", "flops"):
            assert after[name][key] == before[name][key], (name, key)
    capsys.readouterr()
    assert main(["recovery", str(cfg_path), "--pair", "cifar-resnet14,cifar-resnet26", "--quiet"]) == 0
    assert "training" not in capsys.readouterr().out.split("recovery test")[0].split("[score]")[-1]


def test_recovery_pair_must_name_two_anchors_of_the_config(recovered, capsys):
    cfg_path, _ = recovered
    assert main(["recovery", str(cfg_path), "--pair", "cifar-resnet14,cifar-resnet99", "--quiet"]) == 2
    assert "is not an anchor of this config" in capsys.readouterr().err


def test_repeats_give_mean_accuracies_and_the_noise_they_measure():
    from klas.evaluation.recovery import combine_repeats

    runs = [{(1, 2): {"top1": 80.0, "top1_init": 50.0, "correct": 80, "total": 100},
             (2, 3): {"top1": 70.0, "top1_init": 40.0, "correct": 70, "total": 100}},
            {(1, 2): {"top1": 82.0, "top1_init": 52.0, "correct": 82, "total": 100},
             (2, 3): {"top1": 70.0, "top1_init": 40.0, "correct": 70, "total": 100}}]
    results, noise = combine_repeats(runs)
    assert results[(1, 2)]["top1"] == 81.0 and results[(1, 2)]["top1_repeats"] == [80.0, 82.0]
    assert results[(1, 2)]["top1_init"] == 51.0 and results[(1, 2)]["correct"] == 162
    assert noise["sd_points"] == pytest.approx(1.0)  # variances 2 and 0, pooled
    assert noise["delta_95"] == pytest.approx(1.96)  # 1.96 · √(2/2) · 1
    assert combine_repeats(runs[:1]) == (runs[0], None)


def test_delta_from_noise_needs_repeats(tmp_path):
    from klas.pipeline.config import ConfigError, validate_config

    raw = {"anchors": ["a:1", "a:2"], "data": {"root": "x"}, "recovery": {"delta_from_noise": True}}
    with pytest.raises(ConfigError, match="repeats of 2 or more"):
        validate_config(raw)
    assert validate_config({**raw, "recovery": {"delta_from_noise": True, "repeats": 2}}).recovery.repeats == 2


def test_a_repeated_recovery_keeps_the_first_run_and_sets_delta_from_the_noise(recovered, capsys):
    cfg_path, out = recovered
    first = {p.name: json.loads(p.read_text()) for p in sorted((out / "configurations").glob("i*_j???.json"))}
    capsys.readouterr()
    assert main(["recovery", str(cfg_path), "--pair", "cifar-resnet14,cifar-resnet26", "--quiet",
                 "--set", "recovery.repeats=2", "--set", "recovery.delta_from_noise=true"]) == 0
    log = capsys.readouterr().out
    assert log.count("configurations done; training") == 1  # the second repeat only: the first is the run before
    assert f"0 of {len(first)} configurations done; training {len(first)}" in log
    assert first == {p.name: json.loads(p.read_text()) for p in sorted((out / "configurations").glob("i*_j???.json"))}
    assert len(list((out / "configurations").glob("i*_j*_r1.json"))) == len(first)
    report = json.loads((out / "recovery.json").read_text())
    noise = report["noise"]
    assert noise["repeats"] == 2 and noise["sd_points"] >= 0
    assert report["settings"]["delta"] == pytest.approx(noise["delta_95"], abs=1e-4)
    for c in report["configurations"]:
        name = f"i{c['i']:03d}_j{c['j']:03d}.json"
        assert c["top1_repeats"][0] == first[name]["top1"]
        assert c["top1"] == pytest.approx(sum(c["top1_repeats"]) / 2)
    assert "noise over 2 repeats" in log


def test_the_exact_test_against_random_counts_every_set_of_the_same_size():
    """random_sets_at_least_as_good against a plain enumeration of all subsets."""
    from itertools import combinations

    from klas.evaluation.stats import random_sets_at_least_as_good

    population, good = 9, 3
    for picks in (1, 3, 5):
        for hits in range(0, min(picks, good) + 1):
            sets = list(combinations(range(population), picks))
            share = sum(sum(c < good for c in s) >= hits for s in sets) / len(sets)
            assert random_sets_at_least_as_good(hits, picks, good, population) == pytest.approx(share, abs=1e-12)
    assert random_sets_at_least_as_good(0, 0, 3, 9) is None


def test_a_method_is_said_to_beat_random_only_below_five_percent():
    acc = {(i, j): 50.0 + (10.0 if j == i else 0.0) for i in range(1, 7) for j in range(1, 7)}
    bucket = {c: 0 for c in acc}  # one bucket: the 6 configurations (i, i) are the good ones
    scores = {c: (0.0 if c[0] == c[1] else 1.0) + 0.01 * c[0] for c in acc}
    report = recovery_report({c: {"i": c[0], "j": c[1], "flops": 100, "top1": a, "top1_init": a} for c, a in acc.items()},
                             {"perfect": {"picks": [(i, i) for i in range(1, 4)], "scores": scores},
                              "lucky": {"picks": [(1, 1), (1, 2), (1, 3)], "scores": None}},
                             RecoverySettings(delta=0.0), 0.0, 200.0, 1)
    perfect, lucky = report["methods"]["perfect"], report["methods"]["lucky"]
    assert perfect["random_sets_at_least_as_good"] == pytest.approx(1 / math.comb(36, 3) * math.comb(6, 3))
    assert perfect["beats_random"] and not lucky["beats_random"]
    assert lucky["random_sets_at_least_as_good"] == pytest.approx(1 - math.comb(30, 3) / math.comb(36, 3))
    assert [b["bucket"] for b in perfect["spearman_per_bucket"]] == [0]


def test_the_predictor_tool_reads_the_least_squares_ranking_from_a_stored_test():
    """tools/predictors_in_recovery.py against scipy on the stored ResNet recovery test."""
    import subprocess
    import sys
    from pathlib import Path

    from scipy.stats import spearmanr

    path = Path(__file__).parents[1] / "docs/results/recovery_resnet20_resnet56_100steps/recovery.json"
    doc = json.loads(path.read_text())
    buckets = {}
    for c in doc["configurations"]:
        buckets.setdefault(c["bucket"], []).append(c)
    big = [m for m in buckets.values() if len(m) >= 3]
    want = -sum(len(m) * spearmanr([c["top1_init"] for c in m], [c["top1"] for c in m]).statistic
                for m in big) / sum(len(m) for m in big)
    out = subprocess.run([sys.executable, str(path.parents[3] / "tools/predictors_in_recovery.py"), str(path)],
                         capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if "least-squares" in x)
    assert float(line.split()[-1]) == pytest.approx(want, abs=5e-4)
    assert "klas-omega" in out


def test_a_stored_selection_scored_against_a_stored_recovery_test_gives_the_tests_own_figures():
    """tools/picks_in_recovery.py: KLAS's seed-0 selection of the supernet comparison is the one the
    recovery test at the config's budget scored (same run folder); the tool gives its row again."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    recovery = root / "docs/results/recovery_resnet20_resnet56_100steps/recovery.json"
    row = json.loads(recovery.read_text())["methods"]["klas"]
    out = subprocess.run([sys.executable, str(root / "tools/picks_in_recovery.py"),
                          str(root / "docs/results/resnet20_56_seeds/seed-0/klas_selection.json"), str(recovery)],
                         capture_output=True, text=True, check=True).stdout
    assert f"{row['picks']} picks" in out and f"{row['good_found']} of 26 good" in out
    assert f"precision {row['precision']:.2f}, recall {row['recall']:.2f}" in out
    assert f"points lost per pick {row['mean_points_lost_per_pick']:.2f}" in out
    from scipy.stats import hypergeom  # the file predates this figure: computed here independently

    p = hypergeom(63, 26, row["picks"]).sf(row["good_found"] - 1)
    assert f"P(random >=) {p:.3f}" in out


def test_the_images_every_source_block_reads_are_decoded_once_with_the_same_results(tmp_path, monkeypatch):
    """The test set and the step batches are the same for every source block: decoded once and kept
    (within klas.limits.MAX_DECODED_BYTES); with nothing kept, every block decodes them again and the
    results are the same."""
    import torch

    import klas.evaluation.recovery as recovery
    import klas.extraction.data as data
    from klas.anchors import load_anchor

    class Counted(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x, self.y, self.reads = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g), 0

        def __len__(self):
            return len(self.x)

        def __getitem__(self, k):
            self.reads += 1
            return self.x[k], int(self.y[k])

    f = load_anchor("cifar-resnet:8?pretrained=false&seed=1")
    g = load_anchor("cifar-resnet:14?pretrained=false&seed=2")
    configs = [(1, 2), (2, 4), (3, 5)]  # three source blocks
    settings = RecoverySettings(steps=3, batch_size=4, calibration_images=8)
    runs, bound_kept = {}, data.MAX_DECODED_BYTES
    for bound in (bound_kept, 0):
        monkeypatch.setattr(data, "MAX_DECODED_BYTES", bound)
        train, test = Counted(24, 0), Counted(10, 1)
        results = recovery.train_configurations(f, g, configs, train, test, settings, tmp_path / str(bound),
                                                progress=False, eval_batch=5, log=lambda *_: None)
        runs[bound] = ([(results[c]["final_loss"], results[c]["correct"], results[c]["correct_init"]) for c in configs],
                       train.reads, test.reads)
    kept, again = runs[bound_kept], runs[0]
    assert kept[0] == again[0]
    assert kept[1:] == (8 + 3 * 4, 10)  # calibration + one pass of the steps; the test set once
    assert again[1:] == (8 + 3 * 3 * 4, 3 * 2 * 10)  # every block: its steps, the test set before and after


def test_the_agreement_tool_compares_runs_and_repeats_against_the_measured_noise(tmp_path):
    """tools/recovery_runs_agree.py on small reports written here: differences, the noise level, repeats."""
    import subprocess
    import sys
    from pathlib import Path

    def report(path, top1, repeats=None, sd=None):
        configs = [{"i": 1, "j": k + 2, "top1": t, **({"top1_repeats": repeats[k]} if repeats else {})}
                   for k, t in enumerate(top1)]
        path.write_text(json.dumps({"configurations": configs, "noise": None if sd is None else {"sd_points": sd}}))
        return str(path)

    ref = report(tmp_path / "a.json", [80.0, 81.0, 82.0])
    same = report(tmp_path / "b.json", [80.1, 80.9, 82.0])
    seeds = report(tmp_path / "c.json", [80.5, 81.0, 83.0], repeats=[[80.0, 81.0], [81.0, 81.0], [82.0, 84.0]], sd=0.5)
    tool = Path(__file__).parents[1] / "tools/recovery_runs_agree.py"
    out = subprocess.run([sys.executable, str(tool), ref, same, seeds + "#1"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    level = 1.96 * 2 ** 0.5 * 0.5
    assert out[0] == f"noise: 0.500 points per run, 95% level of a difference {level:.2f}"
    assert out[1].endswith(f"3 configurations, mean +0.000, sd 0.100, largest |difference| 0.10, 0 beyond {level:.2f}")
    assert out[2].endswith(f"3 configurations, mean +1.000, sd 1.000, largest |difference| 2.00, 1 beyond {level:.2f}")
    bad = subprocess.run([sys.executable, str(tool), ref, seeds + "#2"], capture_output=True, text=True)
    assert bad.returncode == 1 and "has no repeat 2" in bad.stderr and "Traceback" not in bad.stderr


def test_the_agreement_tool_refuses_a_file_that_is_not_a_recovery_report_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).parents[1] / "tools/recovery_runs_agree.py"
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"configurations": [{"i": 1, "j": 2, "top1": 80.0}]}))
    for name, doc in (("no_top1.json", {"configurations": [{"i": 1, "j": 2}]}),
                      ("text_top1.json", {"configurations": [{"i": 1, "j": 2, "top1": "80"}]}),
                      ("no_list.json", {"configurations": 3})):
        bad = tmp_path / name
        bad.write_text(json.dumps(doc))
        done = subprocess.run([sys.executable, str(tool), str(good), str(bad)], capture_output=True, text=True)
        assert done.returncode == 1 and "not a recovery report" in done.stderr and "Traceback" not in done.stderr, name
    done = subprocess.run([sys.executable, str(tool), str(good), f"{good}#x"], capture_output=True, text=True)
    assert done.returncode == 1 and "a repeat is a whole number" in done.stderr


def test_mean_interval_takes_a_level_and_the_sign_test_is_scipys_exact_binomial():
    from scipy import stats

    from klas.evaluation.stats import sign_test, t_quantile

    values = [0.2, 0.5, 0.1, 0.4]
    sem = stats.sem(values)
    for level in (0.9, 0.95, 0.975):
        m = mean_interval(values, level=level)
        assert m["high"] - m["mean"] == pytest.approx(stats.t.ppf((1 + level) / 2, 3) * sem, rel=1e-12)
    assert mean_interval(values, level=0.975)["low"] < mean_interval(values)["low"]
    with pytest.raises(ValueError, match="between 0 and 1"):
        t_quantile(3, 1.0)
    assert sign_test([0.3, 0.1, 0.2]) == (3, 3, pytest.approx(0.25))
    assert sign_test([0.3, 0.0, -0.2]) == (1, 2, pytest.approx(1.0))
    assert sign_test([0.0]) == (0, 0, 1.0)
