"""`klas run`: config validation, the staged pipeline on a tiny family, resume after a kill."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from klas.pipeline.cli import main
from klas.pipeline.config import ConfigError, load_config, stage_fingerprint, validate_config

ANCHORS = ["cifar-resnet:8?pretrained=false&seed=1", "cifar-resnet:14?pretrained=false&seed=2"]


def tiny_config(out: Path, data: Path, **finetune) -> dict:
    return {
        "name": "tiny", "out": str(out), "anchors": ANCHORS, "data": {"root": str(data), "val_fraction": 0.25},
        "extract": {"batch_size": 32}, "probes": {"epochs": 2, "batch_size": 32},
        "select": {"compare": ["klas", "snnet-nearest"]},
        "finetune": {"steps": 6, "batch_size": 8, "checkpoint_every": 2, "calibration_images": 16,
                     "protocols": ["snnet"], **finetune},
        "evaluate": {"batch_size": 64},
    }


@pytest.mark.parametrize("edit, message", [
    ({"finetune": {"stepz": 3}}, "finetune.stepz: unknown key"),
    ({"finetune": {"steps": "many"}}, "finetune.steps: expected an integer"),
    ({"select": {"tau_mode": "sideways"}}, "select.tau_mode: must be one of"),
    ({"select": {"method": "oracle"}}, "select.method: must be one of"),
    ({"anchors": ["cifar-resnet:20"]}, "anchors: list at least two"),
    ({"data": {"train_limit": 1.5}}, "data.train_limit: expected int or null"),
    ({"extra": 1}, "extra: unknown key"),
])
def test_config_errors_name_the_key(tmp_path, edit, message):
    raw = tiny_config(tmp_path / "out", tmp_path)
    for k, v in edit.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def test_exponent_notation_reads_as_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"anchors: [a, b]\ndata: {{root: {tmp_path}}}\nfinetune: {{lr: 1e-4}}\nscore: {{floor: 1e-06}}\n")
    cfg = load_config(path)
    assert cfg.finetune.lr == 1e-4 and cfg.score.floor == 1e-6


def test_fingerprints_follow_the_config_parts_a_stage_reads(tmp_path):
    base = validate_config(tiny_config(tmp_path / "o", tmp_path))
    more_steps = validate_config(tiny_config(tmp_path / "o", tmp_path, steps=7))
    faster = validate_config(tiny_config(tmp_path / "o", tmp_path, num_workers=2))
    assert stage_fingerprint(base, "score") == stage_fingerprint(more_steps, "score")
    assert stage_fingerprint(base, "finetune") != stage_fingerprint(more_steps, "finetune")
    assert stage_fingerprint(base, "finetune") == stage_fingerprint(faster, "finetune")  # speed, not results
    assert stage_fingerprint(base, "select", "klas") != stage_fingerprint(base, "select", "snnet-nearest")


def test_config_files_in_the_repository_are_valid():
    root = Path(__file__).resolve().parent.parent / "configs"
    for path in sorted(root.glob("*.yaml")):
        cfg = load_config(path)  # every setting valid
        assert len(cfg.anchors) >= 2 and cfg.name
    comparison = load_config(root / "cifar10_resnet.yaml")
    assert {"klas", "snnet-nearest"} <= set(comparison.select.compare)


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_compares_methods_and_skips_completed_stages(tmp_path, shapes_dir, capsys):
    config = _write(tmp_path, tiny_config(tmp_path / "out", shapes_dir))
    assert main(["run", str(config), "--quiet"]) == 0
    report = json.loads((tmp_path / "out" / "report" / "snnet" / "report.json").read_text())
    assert set(report["methods"]) == {"klas", "snnet-nearest"}
    assert report["comparisons"][0]["ours"] == "klas"
    for m, routes in report["results"].items():
        assert [r["name"] for r in routes][:2] == ["cifar-resnet8", "cifar-resnet14"]  # anchors first
        assert all(0 <= r["top1"] <= 100 and r["total"] == 120 for r in routes)  # one image set: test = all 120
        assert report["methods"][m]["stitches"] == len(routes) - 2
    assert (tmp_path / "out" / "report" / "snnet" / "accuracy_flops.png").stat().st_size > 5000
    # every training leaves its curve: a row per step beside its checkpoint, and the report plots them
    from klas.training_log import read_curve

    for m in ("klas", "snnet-nearest"):
        curve = read_curve(tmp_path / "out" / "methods" / m / "snnet" / "supernet" / "training.csv")
        assert curve["step"] == list(range(6)) and all(math.isfinite(v) and v > 0 for v in curve["loss"])
    probes = read_curve(tmp_path / "out" / "cache" / "probes" / "training.csv")
    assert len(probes["step"]) > 0 and probes["epoch"][-1] == 1 and probes["lr"][0] > probes["lr"][-1]
    assert (tmp_path / "out" / "report" / "snnet" / "training_curves.png").stat().st_size > 5000
    capsys.readouterr()
    # a second run finds every stage complete
    assert main(["run", str(config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == 3 + 3 * 2 and "running" not in out
    # a changed finetuning budget leaves the earlier outputs alone and says so
    assert main(["run", str(config), "--quiet", "--set", "finetune.steps=8"]) == 2


def test_unknown_config_key_is_a_one_line_error(tmp_path, shapes_dir, capsys):
    cfg = tiny_config(tmp_path / "out", shapes_dir)
    cfg["probes"]["epoch"] = 3
    assert main(["run", str(_write(tmp_path, cfg))]) == 2
    assert "probes.epoch: unknown key" in capsys.readouterr().err


def _run_process(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "klas.pipeline.cli", "run", str(config), "--method", "klas", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_killed_finetuning_resumes_to_the_same_result(tmp_path, shapes_dir):
    """SIGKILL once the first checkpoint exists; the rerun continues from it and ends where an
    uninterrupted run ends."""
    steps = dict(steps=30, checkpoint_every=5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = _write(tmp_path / "a", tiny_config(tmp_path / "a" / "out", shapes_dir, **steps))
    killed = _write(tmp_path / "b", tiny_config(tmp_path / "b" / "out", shapes_dir, **steps))
    assert _run_process(straight).wait(timeout=600) == 0
    proc = _run_process(killed)
    checkpoint = tmp_path / "b" / "out" / "methods" / "klas" / "snnet" / "supernet" / "checkpoint.pt"
    deadline = time.time() + 600
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < step < 30
    assert not (checkpoint.parent / ".klas-stage.json").exists()  # finetuning not marked complete
    rerun = _run_process(killed)
    output = rerun.communicate(timeout=600)[0].decode()
    assert rerun.returncode == 0, output
    assert f"(from {step})" in output
    a = torch.load(tmp_path / "a" / "out" / "methods" / "klas" / "snnet" / "supernet" / "checkpoint.pt", weights_only=True)
    b = torch.load(checkpoint, weights_only=True)
    assert a["step"] == b["step"] == 30
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=1e-5, rtol=1e-5, msg=key)
    ra = json.loads((tmp_path / "a" / "out" / "methods" / "klas" / "snnet" / "evaluation" / "evaluation.json").read_text())
    rb = json.loads((tmp_path / "b" / "out" / "methods" / "klas" / "snnet" / "evaluation" / "evaluation.json").read_text())
    assert [r["correct"] for r in ra["routes"]] == [r["correct"] for r in rb["routes"]]


def _outputs(out: Path) -> dict:
    """What a finished run leaves: cache bytes, Θ, selections, finetuned weights, evaluations."""
    from safetensors.torch import load_file

    got = {"shards": {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("cache/*/*/shard-*.bin"))},
           "theta": load_file(str(out / "cache" / "scores" / "scores.safetensors"))["theta_all"]}
    for method_dir in sorted((out / "methods").iterdir()):
        sel = json.loads((method_dir / "selection" / "selection.json").read_text())
        got[f"{method_dir.name}/selected"] = [(c["i"], c["j"]) for p in sel["pairs"] for c in p["selected"]]
        got[f"{method_dir.name}/weights"] = torch.load(method_dir / "snnet" / "supernet" / "checkpoint.pt", weights_only=True)["model"]
        evaluation = json.loads((method_dir / "snnet" / "evaluation" / "evaluation.json").read_text())
        got[f"{method_dir.name}/correct"] = [r["correct"] for r in evaluation["routes"]]
    return got


def assert_same_outputs(reference: Path, other: Path) -> None:
    """Two finished runs agree: shard bytes, Θ exactly, selections and correct counts, weights to 1e-5."""
    a, b = _outputs(reference), _outputs(other)
    assert a.keys() == b.keys() and a["shards"] == b["shards"]
    torch.testing.assert_close(b["theta"], a["theta"], atol=0, rtol=0)
    for key in a:
        if key.endswith("/weights"):
            for name, value in a[key].items():
                torch.testing.assert_close(b[key][name], value, atol=1e-5, rtol=1e-5, msg=name)
        elif key not in ("shards", "theta"):
            assert a[key] == b[key], key


@pytest.mark.slow
def test_run_killed_in_each_stage_ends_like_an_uninterrupted_run(tmp_path, shapes_dir):
    """SIGKILL a real `klas run` once inside each of extract, probes, score and finetune (after
    extraction's first shard and finetuning's first checkpoint, so that those resume), rerunning
    after each kill; the final outputs equal those of a run never killed."""
    settings = dict(steps=40, checkpoint_every=4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    configs = []
    for name in "ab":
        cfg = tiny_config(tmp_path / name / "out", shapes_dir, **settings)
        cfg["probes"]["epochs"] = 150  # long enough to be caught running
        configs.append(_write(tmp_path / name, cfg))
    straight, killed = configs
    cmd = [sys.executable, "-m", "klas.pipeline.cli", "run", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run([*cmd, str(straight)], env=env, capture_output=True).returncode == 0
    out = tmp_path / "b" / "out"
    stages = [  # (stage folder, when to kill: that stage has partial work on disk)
        (out / "cache", lambda: any(out.glob("cache/*/train/shard-00000.bin"))),
        (out / "cache" / "probes", lambda: (out / "cache" / "probes").is_dir()),
        (out / "cache" / "scores", lambda: (out / "cache" / "scores").is_dir()),
        (out / "methods" / "klas" / "snnet" / "supernet", lambda: (out / "methods/klas/snnet/supernet/checkpoint.pt").exists()),
    ]
    for folder, ready in stages:
        proc = subprocess.Popen([*cmd, str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before it could be killed in {folder.name}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (folder / ".klas-stage.json").exists(), f"the kill came after {folder.name} had finished"
    assert subprocess.run([*cmd, str(killed)], env=env, capture_output=True).returncode == 0
    assert_same_outputs(tmp_path / "a" / "out", out)


def test_seeds_run_the_comparison_once_each_and_give_intervals(tmp_path, shapes_dir, capsys):
    from klas.evaluation.seeds import verdict

    cfg = tiny_config(tmp_path / "out", shapes_dir, protocols=["stitches-only"])
    cfg["seeds"] = [0, 1]
    assert main(["run", str(_write(tmp_path, cfg)), "--quiet"]) == 0
    log = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and list(summary["protocols"]) == ["stitches-only"]
    per_seed = [json.loads((tmp_path / "out" / f"seed-{s}" / "report" / "stitches-only" / "report.json").read_text())
                for s in (0, 1)]
    c = summary["protocols"]["stitches-only"]["comparisons"][0]
    deltas = [r["comparisons"][0]["delta_auc"] for r in per_seed]
    assert c["delta_auc"]["mean"] == pytest.approx(sum(deltas) / 2) and c["delta_auc"]["n"] == 2
    assert c["delta_auc_verdict"] == verdict(c["delta_auc"]) and c["delta_auc_verdict"] in log
    assert per_seed[0]["config"]["seed"] == 0 and per_seed[1]["config"]["seed"] == 1
    # stitches-only: the anchors are frozen, so they are the same in both supernets on every seed
    assert c["anchor_top1_difference"] and all(d["mean"] == 0.0 for d in c["anchor_top1_difference"].values())
    shared = [r["comparisons"][0]["shared_stitches"]["mean_difference"] for r in per_seed]
    shared = [x for x in shared if x is not None]
    assert c["shared_stitches"]["mean_difference"]["mean"] == (pytest.approx(sum(shared) / len(shared)) if shared
                                                               else None)
    m = summary["protocols"]["stitches-only"]["methods"][c["ours"]]
    assert m["steps_per_route"]["mean"] == pytest.approx(sum(r["methods"][c["ours"]]["steps_per_route"]
                                                             for r in per_seed) / 2)


def _report(delta_auc: float, anchors: dict) -> dict:
    """A report.json with one comparison, as klas.evaluation.report writes it (the fields the summary reads)."""
    method = {"auc": 80.0 + delta_auc, "stitches": 4, "steps_per_route": 25.0, "best_top1": 90.0,
              "spearman_gamma_top1_within_buckets": None}
    return {"methods": {"klas": method, "snnet-nearest": {**method, "auc": 80.0}},
            "comparisons": [{"ours": "klas", "baseline": "snnet-nearest", "delta_auc": delta_auc, "anchors": anchors,
                             "stitches_only": {"delta_auc": 0.5, "best_gain_at_equal_flops": None},
                             "shared_stitches": {"count": 3, "mean_difference": -0.5 - delta_auc}}]}


def test_the_seed_summary_says_when_the_anchors_differ_between_the_supernets(tmp_path):
    """Under SN-Net's protocol the anchors train in each supernet: the summary gives each anchor's
    difference with its interval and says the all-routes ΔAUC includes it."""
    from klas.evaluation.seeds import summarise_seeds, summary_lines

    reports = {}
    for seed, (a, b) in enumerate([(86.0, 85.0), (85.5, 85.0), (86.5, 85.0)]):
        root = tmp_path / f"seed-{seed}"
        (root / "snnet").mkdir(parents=True)
        anchors = {"r20": {"ours": a, "baseline": b}, "r56": {"ours": 88.0, "baseline": 88.0}}
        (root / "snnet" / "report.json").write_text(json.dumps(_report(0.1 * seed, anchors)))
        reports[seed] = root
    doc = summarise_seeds(reports, ["snnet"], tmp_path / "summary")
    diff = doc["protocols"]["snnet"]["comparisons"][0]["anchor_top1_difference"]
    # t(2) quantile 4.3027 (scipy.stats)
    assert diff["r20"]["mean"] == pytest.approx(1.0) and diff["r20"]["low"] == pytest.approx(1.0 - 4.303 * 0.5 / 3 ** 0.5, abs=2e-4)
    assert diff["r56"]["mean"] == 0.0
    shared = doc["protocols"]["snnet"]["comparisons"][0]["shared_stitches"]
    assert shared["count"]["mean"] == 3 and shared["mean_difference"]["mean"] == pytest.approx(-0.6)
    lines = "\n".join(summary_lines(doc))
    assert "the 3 stitches both supernets hold: top-1 klas minus snnet-nearest -0.60" in lines
    assert "the anchors differ" in lines and "r20 +1.00" in lines and "r56" not in lines.split("the anchors differ")[1]


def test_verdict_says_no_significant_difference_when_the_interval_covers_zero():
    from klas.evaluation.seeds import verdict

    assert verdict({"mean": 0.2, "low": -0.1, "high": 0.5}) == "no significant difference"
    assert verdict({"mean": 0.4, "low": 0.1, "high": 0.7}) == "higher"
    assert verdict({"mean": -0.4, "low": -0.7, "high": -0.1}) == "lower"
    assert verdict({"mean": 0.4, "low": None, "high": None}) == "one seed: no interval"
    assert verdict({"mean": None, "low": None, "high": None, "n": 0}).startswith("no value in any seed")


def test_the_runs_agreement_tool_compares_two_reports_against_the_seed_to_seed_deviation(tmp_path):
    """tools/runs_agree.py on small reports written here: each figure's difference and its verdict."""
    import subprocess
    import sys

    def report(name, auc_a, auc_b, delta, anchor_top1):
        anchor = {"name": "r20", "source": "r20", "target": "r20", "top1": anchor_top1}
        stitch = {"name": "r20:1->r56:3", "source": "r20", "target": "r56", "top1": 50.0}
        doc = {"methods": {"a": {"auc": auc_a}, "b": {"auc": auc_b}}, "results": {"a": [anchor, stitch], "b": [anchor]},
               "comparisons": [{"ours": "a", "baseline": "b", "delta_auc": auc_a - auc_b,
                                "stitches_only": {"delta_auc": delta}}]}
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        return str(path)

    ref = report("ref.json", 80.0, 81.0, -0.5, 90.0)
    other = report("other.json", 80.1, 82.0, -0.4, 90.0)
    seeds = [report(f"seed{k}.json", 80.0 + k / 10, 81.0 + k / 10, -0.5 + k / 10, 90.0 + k) for k in range(3)]
    tool = Path(__file__).parents[1] / "tools/runs_agree.py"
    out = subprocess.run([sys.executable, str(tool), ref, other, "--noise", *seeds], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    level = 1.96 * 2 ** 0.5 * 0.1  # the seeds' sd of every figure but the anchor's top-1 (sd 1)
    assert out[1] == f"AUC a: 80.00 -> 80.10, difference +0.10 (seed sd 0.10, 95% level {level:.2f}: within)"
    assert out[2] == f"AUC b: 81.00 -> 82.00, difference +1.00 (seed sd 0.10, 95% level {level:.2f}: BEYOND)"
    assert out[3].startswith("top-1 a r20: 90.00 -> 90.00, difference +0.00 (seed sd 1.00")
    assert out[5].startswith("ΔAUC a - b, all routes: -1.00 -> -1.90, difference -0.90") and "BEYOND" in out[5]
    assert out[6].startswith("ΔAUC a - b, stitches only: -0.50 -> -0.40, difference +0.10") and out[6].endswith("within)")
    pooled = 0.5 ** 0.5  # the anchor's top-1 varies by 1 across the seeds, the stitch's not at all
    assert out[7] == ("routes of a: 2 in both, mean difference +0.00, largest |difference| 0.00 (per-route seed sd "
                      f"{pooled:.2f} over 2 routes, 95% level {1.96 * 2 ** 0.5 * pooled:.2f}: 0 beyond)")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"methods": {"a": {"auc": "80"}}}))
    done = subprocess.run([sys.executable, str(tool), ref, str(bad)], capture_output=True, text=True)
    assert done.returncode == 1 and "not a report of `klas run`" in done.stderr and "Traceback" not in done.stderr


def test_the_timings_tool_matches_stages_by_folder_and_sums_each_kind(tmp_path):
    """tools/timings_ratio.py on two small timings.json written here."""
    import subprocess
    import sys

    def timings(name, rows):
        path = tmp_path / name
        path.write_text(json.dumps({"format": "klas-timings", "version": 1,
                                    "stages": [{"stage": s, "folder": f, "seconds": t} for s, f, t in rows]}))
        return str(path)

    before = timings("before.json", [("adapt", "seed-0/adapted", 100.0), ("finetune", "seed-0/a", 300.0),
                                     ("finetune", "seed-0/b", 100.0), ("evaluate", "seed-0/only-before", 7.0)])
    after = timings("after.json", [("adapt", "seed-0/adapted", 50.0), ("finetune", "seed-0/a", 150.0),
                                   ("finetune", "seed-0/b", 100.0)])
    tool = Path(__file__).parents[1] / "tools/timings_ratio.py"
    out = subprocess.run([sys.executable, str(tool), before, after], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    finetune = next(line for line in out if line.startswith("finetune") and "(all)" in line).split()
    assert finetune[-3:] == ["400.0", "250.0", "1.60x"]
    assert out[-2].split()[-3:] == ["500.0", "300.0", "1.67x"]  # the stage only one ran is left out
    assert out[-1] == "only before: seed-0/only-before"
    bad = timings("bad.json", [("adapt", "seed-0/adapted", "100")])
    done = subprocess.run([sys.executable, str(tool), before, bad], capture_output=True, text=True)
    assert done.returncode == 1 and "not the timings of a klas run" in done.stderr and "Traceback" not in done.stderr


def test_the_seeds_tool_gives_each_comparisons_interval_at_any_level_and_a_sign_test(tmp_path):
    """tools/seeds_delta.py on small reports written here: the values, the t interval (plain and
    widened for several looks), the sign count and its exact p, checked against scipy."""
    import statistics
    import subprocess
    import sys

    from scipy import stats

    def report(name, delta, stitches):
        doc = {"methods": {"a": {"auc": 80.0 + delta}, "b": {"auc": 80.0}}, "results": {"a": [], "b": []},
               "comparisons": [{"ours": "a", "baseline": "b", "delta_auc": delta,
                                "stitches_only": {"delta_auc": stitches}}]}
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        return str(path)

    deltas, stitches = [0.1, 0.3, 0.2, 0.4], [0.5, -0.1, 0.2, 0.0]
    paths = [report(f"seed{k}.json", d, s) for k, (d, s) in enumerate(zip(deltas, stitches))]
    tool = Path(__file__).parents[1] / "tools/seeds_delta.py"

    def run(*extra):
        return subprocess.run([sys.executable, str(tool), *paths, *extra], capture_output=True, text=True,
                              check=True).stdout.splitlines()

    def interval(values, level):
        half = stats.t.ppf((1 + level) / 2, len(values) - 1) * stats.sem(values)
        return f"[{statistics.mean(values) - half:+.3f}, {statistics.mean(values) + half:+.3f}]"

    plain, wide = run(), run("--looks", "2")
    assert plain[0] == (f"a - b, all routes: +0.100 / +0.300 / +0.200 / +0.400; mean +0.250 {interval(deltas, 0.95)} "
                        f"(95%); 4 of 4 seeds above 0, sign test p = {stats.binomtest(4, 4).pvalue:.3f}")
    assert wide[0].split("; mean ")[1].startswith(f"+0.250 {interval(deltas, 0.975)} (95%, widened to 97.5% for 2 looks)")
    assert interval(deltas, 0.975) != interval(deltas, 0.95)
    # the zero is no sign either way: 2 of the 3 nonzero seeds lie above 0
    assert plain[1].endswith(f"2 of 3 seeds above 0, sign test p = {stats.binomtest(2, 3).pvalue:.3f}")
    # a seed whose set kept no stitch has no stitches-only figure: shown, and left out of its mean
    paths.append(report("seed4.json", 0.5, None))
    with_gap = run()
    assert with_gap[0].startswith("a - b, all routes: +0.100 / +0.300 / +0.200 / +0.400 / +0.500; mean +0.300 ")
    assert with_gap[1] == (f"a - b, stitches only: +0.500 / -0.100 / +0.200 / +0.000 / n/a; mean +0.150 "
                           f"{interval(stitches, 0.95)} (95%); 2 of 3 seeds above 0, sign test p = "
                           f"{stats.binomtest(2, 3).pvalue:.3f}")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    done = subprocess.run([sys.executable, str(tool), paths[0], str(bad)], capture_output=True, text=True)
    assert done.returncode == 1 and "seeds_delta:" in done.stderr and "Traceback" not in done.stderr
    for looks in ("0", str(len(paths) + 1), "100000000000000000000"):
        done = subprocess.run([sys.executable, str(tool), *paths, "--looks", looks], capture_output=True, text=True)
        assert done.returncode == 2 and "--looks" in done.stderr and "Traceback" not in done.stderr, looks
    for level in ("nan", "inf", "1.0", "0"):
        done = subprocess.run([sys.executable, str(tool), *paths, "--level", level], capture_output=True, text=True)
        assert done.returncode == 2 and "--level" in done.stderr and "Traceback" not in done.stderr, level
