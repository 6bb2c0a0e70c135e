"""Results that must not outlive their inputs, and files swapped between runs, protocols and
configurations. Each case damages a real run the way a careless user or a hostile one would and
checks that klas either recomputes what the damaged file stood for (and says so) or stops with exit
status 2 and one line, never reporting the damaged file as if it were right.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tree
from test_hostile_input import R8, _fails_cleanly, _json_edit, _probes, _unchanged_but, run  # noqa: F401

from klas.pipeline.cli import main

pytestmark = pytest.mark.slow

R14 = "cifar-resnet14"


# -- D_v split from the data otherwise than D_t ------------------------------------------------

def test_a_val_cache_of_another_split_seed_is_refused_by_probes_and_score(run, shapes_dir, capsys):
    """D_v extracted with another seed shares most of its images with D_t: probes and scores stop."""
    from helpers import REAL_A, REAL_B

    other = run.parent / "other-seed"
    assert main(["extract", "--anchor", REAL_A, "--anchor", REAL_B, "--data", str(shapes_dir), "--out", str(other),
                 "--splits", "val", "--seed", "5", "--batch-size", "16", "--shard-rows", "32", "--quiet"]) == 0
    for name in (R8, R14):
        val = run / "cache" / name / "val"
        shutil.rmtree(val)
        shutil.copytree(other / name / "val", val)
    before = tree(run)
    _fails_cleanly(_probes(run), capsys, r"split from the data otherwise", r"seed 5 against 0", "same data, seed")
    # probes trained before the swap record their D_t split: scoring the new D_v is refused as well
    score = ["score", "--cache", str(run / "cache"), "--out", str(run.parent / "new-scores"), "--no-plots"]
    _fails_cleanly(score, capsys, r"split from the data otherwise", "the probes")
    _unchanged_but(run, before, set())


# -- the recovery test: results keyed by what they were computed from --------------------------

def _recovery_config(root: Path, shapes_dir: Path, checkpoint: Path) -> Path:
    cfg = {"out": str(root / "out"), "anchors": ["cifar-resnet:8?pretrained=false&seed=1", f"cifar-resnet:14:{checkpoint}"],
           "data": {"root": str(shapes_dir), "test_limit": 30},
           "extract": {"batch_size": 32, "shard_rows": 64}, "probes": {"epochs": 1},
           "recovery": {"steps": 3, "batch_size": 8, "calibration_images": 16, "random_seeds": 2,
                        "methods": ["klas", "random"]}}
    path = root / "rec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _resnet14_checkpoint(path: Path, seed: int) -> None:
    from klas.anchors import load_anchor

    torch.save(load_anchor(f"cifar-resnet:14?pretrained=false&seed={seed}").model.state_dict(), path)


@pytest.fixture(scope="module")
def recovery_run(tmp_path_factory, shapes_dir):
    root = tmp_path_factory.mktemp("stale-recovery")
    _resnet14_checkpoint(root / "r14.pt", seed=2)
    cfg = _recovery_config(root, shapes_dir, root / "r14.pt")
    assert main(["recovery", str(cfg), "--pair", f"{R8},{R14}", "--quiet"]) == 0
    return root


@pytest.fixture
def recovery(recovery_run, tmp_path):
    """A private copy of the finished recovery run (its config pointing at the copy's `out`, its
    specs unchanged: the checkpoint stays where the run read it)."""
    root = tmp_path / "rec"
    shutil.copytree(recovery_run, root, symlinks=True)
    doc = yaml.safe_load((root / "rec.yaml").read_text())
    doc["out"] = str(root / "out")
    (root / "rec.yaml").write_text(yaml.safe_dump(doc))
    return root / "rec.yaml", root / "out" / "recovery" / f"{R8}__{R14}"


def _results(out: Path) -> dict[tuple[int, int], dict]:
    docs = [json.loads(p.read_text()) for p in sorted((out / "configurations").glob("i*_j*.json"))]
    return {(d["i"], d["j"]): d for d in docs}


def _rerun(cfg: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["recovery", str(cfg), "--pair", f"{R8},{R14}", "--quiet"]) == 0
    return capsys.readouterr().out


def test_recovery_results_are_recomputed_when_an_anchors_weights_change(tmp_path, shapes_dir, capsys):
    _resnet14_checkpoint(tmp_path / "r14.pt", seed=2)
    cfg = _recovery_config(tmp_path, shapes_dir, tmp_path / "r14.pt")
    _rerun(cfg, capsys)
    out = tmp_path / "out" / "recovery" / f"{R8}__{R14}"
    old = _results(out)
    first = next(iter(old.values()))
    assert all(d["inputs"]["target_weights"] == first["inputs"]["target_weights"] for d in old.values())
    _resnet14_checkpoint(cfg.parent / "r14.pt", seed=3)  # other weights behind the same spec
    shutil.rmtree(cfg.parent / "out" / "cache")
    said = _rerun(cfg, capsys)
    assert f"{len(old)} earlier result(s) not reused" in said and "other weights, samples or settings" in said
    new = _results(out)
    assert new.keys() == old.keys()
    assert all(new[c]["inputs"]["target_weights"] != old[c]["inputs"]["target_weights"] for c in new)
    assert all(new[c]["final_loss"] != old[c]["final_loss"] for c in new)  # trained again, on the new weights


def _copy_over(out: Path, source: tuple[int, int], target: tuple[int, int]) -> None:
    name = "i{:03d}_j{:03d}.json"
    shutil.copy(out / "configurations" / name.format(*source), out / "configurations" / name.format(*target))


def _set(field: str, value):
    return lambda doc: doc.__setitem__(field, value)


@pytest.mark.parametrize("damage", [
    "another configuration's file", "top-1 against its counts", "field missing", "number as a string",
    "link loop", "not JSON",
])
def test_a_damaged_or_misplaced_recovery_result_is_trained_again(recovery, capsys, damage):
    cfg, out = recovery
    good = _results(out)
    victim, other = sorted(good)[0], sorted(good)[-1]
    path = out / "configurations" / "i{:03d}_j{:03d}.json".format(*victim)
    if damage == "another configuration's file":
        _copy_over(out, other, victim)
    elif damage == "top-1 against its counts":
        _json_edit(path, _set("top1", 99.0))
    elif damage == "field missing":
        _json_edit(path, lambda d: d.pop("correct"))
    elif damage == "number as a string":
        _json_edit(path, _set("top1", str(good[victim]["top1"])))
    elif damage == "link loop":
        path.unlink()
        path.symlink_to(path.name)
    else:
        path.write_text("{")
    said = _rerun(cfg, capsys)
    assert "1 earlier result(s) not reused" in said
    report = json.loads((out / "recovery.json").read_text())
    listed = [(c["i"], c["j"]) for c in report["configurations"]]
    assert sorted(listed) == sorted(good)  # each configuration once
    fresh = _results(out)[victim]
    assert not path.is_symlink() and (fresh["i"], fresh["j"]) == victim
    for key in ("top1", "top1_init", "correct", "total"):  # trained again from the same inputs: the same numbers
        assert fresh[key] == pytest.approx(good[victim][key], abs=1e-9), key


# -- files of one protocol handed to the other, a reversed selection, two writers ----------------

@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory, shapes_dir):
    root = tmp_path_factory.mktemp("stale-run")
    cfg = {"out": str(root / "out"), "anchors": ["cifar-resnet:8?pretrained=false&seed=1",
                                                 "cifar-resnet:14?pretrained=false&seed=2"],
           "data": {"root": str(shapes_dir), "test_limit": 30},
           "extract": {"batch_size": 32, "shard_rows": 64}, "probes": {"epochs": 1},
           "finetune": {"steps": 4, "batch_size": 8, "calibration_images": 16, "checkpoint_every": 2,
                        "protocols": ["snnet", "stitches-only"]},
           "evaluate": {"batch_size": 32}}
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--quiet"]) == 0
    return root


@pytest.fixture
def finished(protocol_run, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(protocol_run, root, symlinks=True)
    doc = yaml.safe_load((root / "run.yaml").read_text())
    doc["out"] = str(root / "out")
    (root / "run.yaml").write_text(yaml.safe_dump(doc))
    return root / "run.yaml", root / "out"


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swap")
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)


def test_evaluations_swapped_between_protocols_are_refused(finished, capsys):
    cfg, out = finished
    method = out / "methods" / "klas"
    _swap(method / "snnet/evaluation/evaluation.json", method / "stitches-only/evaluation/evaluation.json")
    before = tree(out)
    _fails_cleanly(["run", str(cfg), "--quiet"], capsys, r"evaluation of another method, protocol or config",
                   r"protocol 'stitches-only' \(this run: 'snnet'\)", "to evaluate again")
    _unchanged_but(out, before, {".klas-run.lock"})


def test_a_checkpoint_swapped_between_protocols_is_not_evaluated(finished, capsys):
    cfg, out = finished
    method = out / "methods" / "klas"
    _swap(method / "snnet/supernet/checkpoint.pt", method / "stitches-only/supernet/checkpoint.pt")
    shutil.rmtree(method / "snnet/evaluation")  # evaluation runs again, from the swapped checkpoint
    before = tree(out)
    _fails_cleanly(["run", str(cfg), "--quiet"], capsys, r"checkpoint\.pt belongs to other routes or finetune settings")
    _unchanged_but(out, before, {".klas-run.lock"})


def test_a_selection_with_its_pair_reversed_is_refused(finished, capsys):
    cfg, out = finished
    sel = out / "methods" / "klas" / "selection" / "selection.json"

    def reverse(doc):
        for p in doc["pairs"]:
            p["source"], p["target"] = p["target"], p["source"]
            for c in p["selected"] + p["configurations"]:
                c["source"], c["target"], c["i"], c["j"] = c["target"], c["source"], c["j"] + 1, c["i"] - 1
        doc["chain"].reverse()

    _json_edit(sel, reverse)
    shutil.rmtree(out / "methods" / "klas" / "snnet")
    before = tree(out)
    _fails_cleanly(["run", str(cfg), "--quiet"], capsys, "selection.json", "from cheaper to costlier", "klas select")
    _unchanged_but(out, before, {".klas-run.lock"})


_HOLD = textwrap.dedent("""
    import sys, time
    from klas.locking import acquire
    acquire(sys.argv[1], what="x", fix="y")
    print("held", flush=True)
    time.sleep(60)
""")


def test_a_second_run_into_one_out_is_refused_naming_the_first(finished, capsys):
    cfg, out = finished
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out / ".klas-run.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree(out)
        _fails_cleanly(["run", str(cfg), "--quiet"], capsys, rf"{out} is in use by another klas process",
                       rf"process {holder.pid} on", "wait for that run to finish")
        _fails_cleanly(["recovery", str(cfg), "--pair", f"{R8},{R14}", "--quiet"], capsys, f"process {holder.pid}")
        _unchanged_but(out, before, set())
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", str(cfg), "--quiet"]) == 0  # the kernel dropped the dead holder's lock


def test_a_selection_of_another_runs_anchors_is_refused(finished, capsys):
    cfg, out = finished
    sel = out / "methods" / "klas" / "selection" / "selection.json"
    _json_edit(sel, lambda doc: doc["anchors"][0].__setitem__("spec", "cifar-resnet:8?pretrained=false&seed=9"))
    before = tree(out)
    _fails_cleanly(["run", str(cfg), "--quiet"], capsys, "selects among other anchors than this run's",
                   "seed=9", "to select again")
    _unchanged_but(out, before, {".klas-run.lock"})


def test_a_run_records_and_prints_the_seconds_of_every_stage(protocol_run):
    """timings.json: every stage that ran, from its marker, in pipeline order (the table RESULTS'
    wall times come from)."""
    import json

    from klas.pipeline.run import stage_times, timing_table

    doc = json.loads((protocol_run / "out" / "timings.json").read_text())
    stages = [r["stage"] for r in doc["stages"]]
    assert stages == ["extract", "probes", "score", "select", "finetune", "finetune", "evaluate", "evaluate"]
    assert {r["folder"] for r in doc["stages"] if r["stage"] == "finetune"} == {
        "methods/klas/snnet/supernet", "methods/klas/stitches-only/supernet"}
    assert all(r["seconds"] > 0 for r in doc["stages"])
    assert doc["total_seconds"] == pytest.approx(sum(r["seconds"] for r in doc["stages"]))
    assert doc["stages"] == stage_times(protocol_run / "out")
    assert "methods/klas/snnet/supernet" in timing_table(doc["stages"])


# -- FLOPs counted by an older klas (two per multiply-accumulate) --------------------------------

def test_caches_of_the_older_flops_count_are_read_as_multiply_accumulates(run, capsys):
    """A manifest without `flops_unit` holds torch's counts (two per multiply-accumulate): scoring
    halves them exactly, so its scores equal those of the caches as this klas writes them."""
    want = json.loads((run / "cache/scores/scores.json").read_text())["anchors"]
    for manifest in run.glob("cache/*/*/manifest.json"):
        def older(m):
            info = m["anchor_info"]
            info.pop("flops_unit")
            f = info["flops"]
            info["flops"] = {"stem": 2 * f["stem"], "blocks": [2 * b for b in f["blocks"]], "head": 2 * f["head"]}
        _json_edit(manifest, older)
    assert main(["score", "--cache", str(run / "cache"), "--out", str(run / "rescored"), "--no-plots"]) == 0
    got = json.loads((run / "rescored/scores.json").read_text())
    assert got["flops_unit"] == "mac"
    assert [a["flops"] for a in got["anchors"]] == [a["flops"] for a in want]


def test_a_selection_of_the_older_flops_count_is_refused(run, capsys, tmp_path):
    assert main(["select", "--scores", str(run / "cache/scores"), "--out", str(tmp_path / "sel")]) == 0
    _json_edit(tmp_path / "sel/selection.json", lambda d: d.pop("flops_unit"))
    _fails_cleanly(["export", "--selection", str(tmp_path / "sel/selection.json"), "--out", str(tmp_path / "x.json")],
                   capsys, "FLOPs are not recorded as 'mac'.*older klas.*select again")
