"""Scores: Γ = Ω / Σ, the saved files, and the probes -> score pipeline on synthetic caches."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from klas.pipeline.cli import main
from klas.scoring.scores import load_scores, stitch_scores

from helpers import feature_cache
from test_kl import theta_numpy


def test_stitch_scores_divide_omega_by_sigma():
    theta = torch.rand(4, 6) + 0.1
    sigma = torch.rand(5) + 0.1
    gamma = stitch_scores(theta, sigma)
    assert gamma.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            assert gamma[i, j] == pytest.approx(float(theta[i, j] / sigma[j]))


def test_sigma_floor_is_applied_and_reported():
    theta = torch.ones(3, 3)
    sigma = torch.tensor([0.0, 0.5])
    with pytest.warns(UserWarning, match=r"j = \[1\]"):
        gamma = stitch_scores(theta, sigma, floor=1e-3)
    assert gamma[0, 0] == pytest.approx(1e3) and gamma[0, 1] == pytest.approx(2.0)


@pytest.mark.parametrize("theta_shape,sigma_len,message", [((3, 4), 4, "has 4 entries"), ((1, 4), 3, "at least 2")])
def test_stitch_scores_shape_errors(theta_shape, sigma_len, message):
    with pytest.raises(ValueError, match=message):
        stitch_scores(torch.rand(theta_shape), torch.rand(sigma_len))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    for name, widths, seed in (("small", (4, 8, 4), 1), ("mid", (6, 6, 6, 6), 2), ("big", (8,) * 5, 3)):
        for split, n, ds in (("train", 1200, 0), ("val", 301, 5)):
            feature_cache(root / name / split, n, widths, 5, seed=seed, data_seed=ds, noise=0.6, anchor=f"test:{name}", split=split)
    assert main(["probes", "--cache", str(root), "--quiet", "--epochs", "2", "--batch-size", "64"]) == 0
    assert main(["score", "--cache", str(root)]) == 0
    return root


def test_saved_gamma_equals_omega_over_sigma_from_saved_theta(scored):
    from safetensors.torch import load_file

    t = load_file(str(scored / "scores" / "scores.safetensors"))
    meta = json.loads((scored / "scores" / "scores.json").read_text())
    assert [a["name"] for a in meta["anchors"]] == ["small", "mid", "big"]  # sorted by FLOPs
    assert {(p["source"], p["target"]) for p in meta["pairs"]} == {("small", "mid"), ("small", "big"), ("mid", "big")}
    for p in meta["pairs"]:
        f, g = p["source"], p["target"]
        theta, sigma, gamma = t[f"theta/{f}/{g}"], t[f"sigma/{g}"], t[f"gamma/{f}/{g}"]
        np.testing.assert_allclose(gamma.numpy(), (theta[:-1, :-1] / sigma.clamp_min(meta["floor"])).numpy(), rtol=1e-6)
    assert (scored / "scores" / "heatmaps" / "small__big.png").stat().st_size > 1000


def test_saved_theta_matches_an_independent_computation(scored):
    from klas.cache import CacheReader
    from klas.scoring.probes import load_probes

    s = load_scores(scored / "scores")
    logits = {}
    for name in ("small", "big"):
        reader = CacheReader(scored / name / "val")
        rows = np.concatenate([b.features for b in reader.batches(1000)]).astype(np.float64)
        ps = load_probes(scored / "probes", name)
        m = reader.manifest
        z = [rows[:, e.offset:e.offset + e.width] @ w.double().numpy().T + b.double().numpy()
             for e, w, b in zip(m.block_entries[:-1], ps.weights, ps.biases)]
        lo = m.logits_entry
        z.append(rows[:, lo.offset:lo.offset + lo.width])
        logits[name] = np.stack(z)
    want = theta_numpy(logits["small"], logits["big"])
    np.testing.assert_allclose(s.theta("small", "big").numpy(), want, atol=1e-4, rtol=1e-4)
    # Σ_j is Θ between consecutive distributions of the target
    sigma = [theta_numpy(logits["big"][j:j + 1], logits["big"][j + 1:j + 2])[0, 0] for j in range(4)]
    np.testing.assert_allclose(s.sigma("big").numpy(), sigma, atol=1e-4, rtol=1e-4)
    assert s.last_block().shape == (3, 3)


def test_score_refuses_probes_of_another_anchor(scored, tmp_path):
    import shutil

    shutil.copytree(scored, tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "probes" / "mid.json").read_text())
    meta["anchor"] = "test:other"
    (tmp_path / "r" / "probes" / "mid.json").write_text(json.dumps(meta))
    assert main(["score", "--cache", str(tmp_path / "r"), "--no-plots"]) == 2


def test_select_cli_writes_selection_and_plot(scored, capsys):
    assert main(["select", "--scores", str(scored / "scores"), "--tau", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "anchor chain (minimax): small" in out
    sel = json.loads((scored / "selection" / "selection.json").read_text())
    assert sel["chain"][0] == "small" and sel["chain"][-1] == "big"
    for pair in sel["pairs"]:
        assert {c["j"] for c in pair["selected"]} == {c["j"] for c in pair["configurations"]}
    assert (scored / "selection" / "selection.png").stat().st_size > 1000
    assert main(["select", "--scores", str(scored / "scores"), "--tau", "-1"]) == 2


def test_quiet_score_and_select_print_only_where_their_files_went(scored, tmp_path, capsys):
    capsys.readouterr()
    assert main(["score", "--cache", str(scored), "--out", str(tmp_path / "s"), "--no-plots", "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"scores written to {tmp_path / 's'}"]
    assert main(["select", "--scores", str(tmp_path / "s"), "--out", str(tmp_path / "sel"), "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "written to" in lines[0] and "anchor chain" not in lines[0]
    assert json.loads((tmp_path / "sel" / "selection.json").read_text())["flops_unit"] == "mac"


def _strict_json(path):
    """json.loads that refuses NaN / Infinity, which are not JSON."""
    def refuse(name):
        raise ValueError(f"{path} holds {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_select_cli_snnet_baseline(scored):
    assert main(["select", "--scores", str(scored / "scores"), "--method", "snnet-nearest"]) == 0
    sel = _strict_json(scored / "selection" / "selection-snnet-nearest.json")
    assert sel["method"] == "snnet-nearest" and sel["chain"] == ["small", "mid", "big"]
    # configurations outside KLAS's domain (j = 0, or i = m_f) have no Γ: null in the file, NaN once read back
    from klas.selection.select import config_from_json

    depth = {a["name"]: a["depth"] for a in sel["anchors"]}
    unscored = [c for p in sel["pairs"] for c in p["selected"] if c["gamma"] is None]
    assert unscored and all(c["j"] == 0 or c["i"] == depth[c["source"]] for c in unscored)
    assert config_from_json(unscored[0]).gamma != config_from_json(unscored[0]).gamma


def test_export_snnet_and_csv_and_import_round_trip(scored, tmp_path):
    import csv

    assert main(["select", "--scores", str(scored / "scores")]) == 0
    selection = scored / "selection" / "selection.json"
    assert main(["export", "--selection", str(selection), "--format", "klas-pairs", "--out", str(tmp_path / "s.json")]) == 0
    assert main(["export", "--selection", str(selection), "--format", "snnet", "--out", str(tmp_path / "n.json")]) == 0
    assert main(["export", "--selection", str(selection), "--format", "csv", "--out", str(tmp_path / "s.csv")]) == 0
    sel = json.loads(selection.read_text())
    snnet = json.loads((tmp_path / "s.json").read_text())
    assert snnet["anchors"] == [a["spec"] for a in sel["anchors"]]
    for pair, entry in zip(sel["pairs"], snnet["stitch_configs"]):
        assert entry["configs"] == [[c["i"] - 1, c["j"]] for c in pair["selected"]]  # (a, b) = (i - 1, j)
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(rows) == sum(len(p["selected"]) for p in sel["pairs"])
    # the reverse import scores the same configurations with the same Γ
    assert main(["import-snnet", str(tmp_path / "s.json"), "--scores", str(scored / "scores"),
                 "--out", str(tmp_path)]) == 0
    imported = json.loads((tmp_path / "selection-imported.json").read_text())
    for p, q in zip(sel["pairs"], imported["pairs"]):
        assert [(c["i"], c["j"], c["gamma"]) for c in p["selected"]] == \
            sorted([(c["i"], c["j"], c["gamma"]) for c in q["selected"]], key=lambda t: [
                (c["i"], c["j"]) for c in p["selected"]].index(t[:2]))
    # SN-Net's own list form imports to the same configurations
    assert main(["import-snnet", str(tmp_path / "n.json"), "--scores", str(scored / "scores"),
                 "--out", str(tmp_path / "n")]) == 0
    again = json.loads((tmp_path / "n" / "selection-imported.json").read_text())
    assert [sorted((c["i"], c["j"]) for c in p["selected"]) for p in again["pairs"]] == \
        [sorted((c["i"], c["j"]) for c in p["selected"]) for p in imported["pairs"]]


def test_import_rejects_configurations_outside_the_anchors(scored, tmp_path):
    bad = {"format": "snnet-stitch-configs", "version": 1, "anchors": ["test:small", "test:big"],
           "stitch_configs": [{"front": 0, "end": 1, "configs": [[40, 2]]}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["import-snnet", str(tmp_path / "bad.json"), "--scores", str(scored / "scores"),
                 "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("method", ["cka", "mse", "ce", "dm", "kl-ls", "random"])
def test_select_cli_metric_baselines(scored, method):
    argv = ["select", "--scores", str(scored / "scores"), "--method", method, "--out", str(scored / f"sel-{method}")]
    if method != "random":
        assert main(argv) == 2  # the metric methods need the caches
        argv += ["--cache", str(scored)]
    assert main(argv) == 0
    sel = json.loads((scored / f"sel-{method}" / f"selection-{method}.json").read_text())
    klas_sel = json.loads((scored / "selection" / "selection.json").read_text()) if (scored / "selection" / "selection.json").exists() else None
    assert sel["method"] == method and sel["pairs"]
    for pair in sel["pairs"]:
        assert pair["selected"]
        for c in pair["selected"]:
            assert c["gamma"] == c["gamma"] and c["gamma"] >= 0  # finite, non-negative distances
    if method == "random" and klas_sel:
        assert [len(p["selected"]) for p in sel["pairs"]] == [len(p["selected"]) for p in klas_sel["pairs"]]


def test_metric_baseline_refuses_a_cache_other_than_the_scored_one(scored, tmp_path):
    import shutil

    shutil.copytree(scored, tmp_path / "r")
    manifest = tmp_path / "r" / "small" / "val" / "manifest.json"  # the cheapest: always in the chain
    data = json.loads(manifest.read_text())
    data["source"]["note"] = "re-extracted"
    manifest.write_text(json.dumps(data))
    argv = ["select", "--scores", str(tmp_path / "r" / "scores"), "--method", "cka", "--cache", str(tmp_path / "r")]
    assert main(argv) == 2


def test_sigma_at_the_last_block_is_measured_with_the_head_and_with_the_last_probe(scored):
    """The head-based value is the Σ_{m-1} Γ uses; the probe-based one is Θ(P_{m-1} ‖ P_m) computed
    here independently from the cached rows and the saved probes."""
    from klas.cache import CacheReader
    from klas.scoring.probes import load_probes

    s = load_scores(scored / "scores")
    assert set(s.sigma_last_block) == {"small", "mid", "big"}
    for name in ("small", "big"):
        d = s.sigma_last_block[name]
        assert abs(d["head"] - float(s.sigma(name)[-1])) < 1e-5
        reader = CacheReader(scored / name / "val")
        rows = np.concatenate([b.features for b in reader.batches(1000)]).astype(np.float64)
        ps = load_probes(scored / "probes", name)
        m = reader.manifest
        z = [rows[:, e.offset:e.offset + e.width] @ w.double().numpy().T + b.double().numpy()
             for e, w, b in zip(m.block_entries[-2:], ps.weights[-2:], ps.biases[-2:])]
        lo = m.logits_entry
        z.append(rows[:, lo.offset:lo.offset + lo.width])
        want = theta_numpy(np.stack(z), np.stack(z))
        assert abs(d["last_probe"] - want[0, 1]) < 1e-4 and abs(d["last_probe_vs_head"] - want[1, 2]) < 1e-4
        assert abs(d["head"] - want[0, 2]) < 1e-4


def test_scores_check_their_shape_order_and_offsets_and_build_derives_them():
    from helpers import make_scores
    from klas.errors import UsageError
    from klas.scoring.scores import Scores

    s = make_scores([2, 3], 0)
    small, big = s.anchors  # 6 and 9 blocks, cheapest first
    fields = dict(floor=s.floor, temperature=1.0, split="val", caches={})
    with pytest.raises(UsageError, match=r"theta_all must be \[K, K\] with K = 15"):
        Scores(anchors=s.anchors, theta_all=s.theta_all[:14, :14], **fields)
    with pytest.raises(UsageError, match="a1.s rows start at 6, not at 0"):
        Scores(anchors=[big, small], theta_all=s.theta_all, **fields)
    # given costlier first, with Θ's blocks in that order: build reorders and derives the offsets
    swap = torch.cat([torch.arange(6, 15), torch.arange(0, 6)])
    built = Scores.build([big, small], s.theta_all[swap][:, swap], **fields)
    assert [a.name for a in built.anchors] == ["a0", "a1"] and [a.offset for a in built.anchors] == [0, 6]
    torch.testing.assert_close(built.theta_all, s.theta_all, rtol=0, atol=0)
    torch.testing.assert_close(built.gamma("a0", "a1"), s.gamma("a0", "a1"), rtol=0, atol=0)
    mask = built.valid("a0", "a1")  # grids 8/4/2 in runs of 2 (a0) and 3 (a1) blocks
    assert mask.shape == (5, 8)
    assert mask[0, 0] and mask[1, 2] and not mask[0, 3] and mask[2, 3] and mask[4, 7] and not mask[4, 5]
    assert int(mask.sum()) == 2 * 3 + 2 * 3 + 1 * 2  # per grid: source blocks x target blocks on it
