"""Every setting reaches the stage that uses it: moved alone from a base, each setting declared as
changing a result changes what the stage produces (the supernet's weights, each configuration's
recovery result, the probes, Γ, the selection's decisions); the settings declared as changing none
(checkpoints, worker processes, the recovery test's scoring), moved all together, leave it
bit-equal. Small random ResNets, a few steps each."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from klas.anchors import load_anchor
from klas.evaluation.recovery import RecoverySettings, train_configurations
from klas.stitching.finetune import FinetuneSettings, finetune
from klas.stitching.stitch import StitchedSupernet

CONFIGS = [(1, 2), (2, 4)]


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, k):
        return self.x[k], int(self.y[k])


def _anchors():
    return (load_anchor("cifar-resnet:8?pretrained=false&seed=1"),
            load_anchor("cifar-resnet:14?pretrained=false&seed=2"))


def _declared_settings(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if "help" in f.metadata]


# ---- supernet finetuning (and adaptation, which trains through the same function) ------------------

FINETUNE_BASE = FinetuneSettings(steps=4, batch_size=8, lr=1e-2, weight_decay=0.05, warmup_fraction=0.5, seed=0,
                                 checkpoint_every=4)
FINETUNE_MOVED = {"steps": 5, "batch_size": 6, "lr": 2e-2, "weight_decay": 1.0, "warmup_fraction": 0.0, "seed": 1,
                  "freeze_bn": False, "stitches_only": True, "checkpoint_every": 1, "num_workers": 1,
                  "precision": "bfloat16"}
NOT_MOVED = {"device": "the device computes the same result (on the CPU here)"}


def _finetuned(settings: FinetuneSettings, out) -> dict[str, torch.Tensor]:
    a, b = _anchors()
    net = StitchedSupernet([a, b], [(a.name, b.name, *c) for c in CONFIGS])
    finetune(net, Images(48, 0), settings, out, progress=False)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_every_finetuning_setting_is_moved_here():
    assert set(_declared_settings(FinetuneSettings)) == set(FINETUNE_MOVED) | set(NOT_MOVED)


@pytest.fixture(scope="module")
def finetune_base(tmp_path_factory):
    return _finetuned(FINETUNE_BASE, tmp_path_factory.mktemp("base"))


def _moves(moved: dict, cls) -> list[tuple[str, ...]]:
    """Each result-changing setting alone, then every other setting together (none may change anything)."""
    changing = sorted(n for n in moved if n in cls.result_settings())
    return [(n,) for n in changing] + [tuple(sorted(set(moved) - set(changing)))]


@pytest.mark.parametrize("names", _moves(FINETUNE_MOVED, FinetuneSettings), ids=",".join)
def test_a_moved_finetuning_setting_changes_the_weights_exactly_when_declared_to(names, tmp_path, finetune_base):
    base = finetune_base
    moved = _finetuned(dataclasses.replace(FINETUNE_BASE, **{n: FINETUNE_MOVED[n] for n in names}), tmp_path / "moved")
    changed = any(not torch.equal(base[k], moved[k]) for k in base)
    assert changed == (len(names) == 1 and names[0] in FinetuneSettings.result_settings()), (names, changed)


# ---- the recovery test -----------------------------------------------------------------------------

RECOVERY_BASE = RecoverySettings(steps=3, batch_size=8, lr=1e-2, weight_decay=0.0, warmup_fraction=0.0,
                                 calibration_images=16, seed=0)
RECOVERY_MOVED = {"steps": 4, "batch_size": 6, "lr": 2e-2, "weight_decay": 0.5, "warmup_fraction": 0.5,
                  "calibration_images": 24, "seed": 1, "precision": "bfloat16",
                  # the scoring settings: they score the results, never change them (recovery_report reads them)
                  "delta": 1.0, "random_seeds": 3, "repeats": 2, "delta_from_noise": True, "test_limit": 10,
                  "methods": ["klas"]}
RECOVERY_NOT_MOVED = {"test_images": "the test set's size, recorded with the results (the run sets it from the data)"}


def _recovered(settings: RecoverySettings, out) -> list[tuple]:
    f, g = _anchors()
    results = train_configurations(f, g, CONFIGS, Images(48, 0), Images(20, 1), settings, out, progress=False,
                                   eval_batch=10, log=lambda *_: None)
    return [(results[c]["final_loss"], results[c]["correct_init"], results[c]["correct"]) for c in CONFIGS]


def test_every_recovery_setting_is_moved_here():
    assert set(_declared_settings(RecoverySettings)) == set(RECOVERY_MOVED) | set(RECOVERY_NOT_MOVED)


@pytest.fixture(scope="module")
def recovery_base(tmp_path_factory):
    return _recovered(RECOVERY_BASE, tmp_path_factory.mktemp("base"))


@pytest.mark.parametrize("names", _moves(RECOVERY_MOVED, RecoverySettings), ids=",".join)
def test_a_moved_recovery_setting_changes_the_results_exactly_when_declared_to(names, tmp_path, recovery_base):
    base = recovery_base
    moved = _recovered(dataclasses.replace(RECOVERY_BASE, **{n: RECOVERY_MOVED[n] for n in names}), tmp_path / "moved")
    assert (base != moved) == (len(names) == 1 and names[0] in RecoverySettings.result_settings()), (names, base, moved)


# ---- probes and scores: the run passes each section whole, by its settings' names ------------------

PROBES_MOVED = {"epochs": 2, "batch_size": 16, "lr": 0.05, "weight_decay": 0.1, "labels": "pseudo",
                "standardise": False}
SCORE_MOVED = {"temperature": 2.0, "floor": 1e3}
SCORE_NOT_MOVED = {"backend": "Θ equal within rounding on every backend (tests/test_kl.py), not bit-equal"}


def test_every_probe_and_score_setting_is_moved_here():
    from klas.pipeline.config import ProbesSection, ScoreSection

    assert set(_declared_settings(ProbesSection)) == set(PROBES_MOVED)
    assert set(_declared_settings(ScoreSection)) == set(SCORE_MOVED) | set(SCORE_NOT_MOVED)


def _probe_weights(real_run, section) -> list[torch.Tensor]:
    from klas.scoring.probes import train_probes

    cache = real_run / "cache"
    names = sorted(p.name for p in cache.iterdir() if (p / "train").is_dir())
    sets = train_probes([cache / n / "train" for n in names], None, **section.to_json(), progress=False,
                        evaluate=False)
    return [w for s in sets for w in s.weights]


@pytest.mark.parametrize("name", sorted(PROBES_MOVED))
def test_a_moved_probe_setting_changes_the_probes(name, real_run):
    from klas.pipeline.config import ProbesSection

    base = ProbesSection(epochs=1, batch_size=32)
    a, b = _probe_weights(real_run, base), _probe_weights(real_run, base.replace(**{name: PROBES_MOVED[name]}))
    assert any(not torch.equal(x, y) for x, y in zip(a, b)), name


@pytest.mark.parametrize("name", sorted(SCORE_MOVED))
def test_a_moved_score_setting_changes_gamma(name, real_run):
    from klas.pipeline.config import ScoreSection
    from klas.scoring.scores import score

    cache = real_run / "cache"
    base = ScoreSection()
    a = score(cache, cache / "probes", **base.to_json(), plots=False)
    b = score(cache, cache / "probes", **base.replace(**{name: SCORE_MOVED[name]}).to_json(), plots=False)
    pair = (a.anchors[0].name, a.anchors[1].name)
    ga, gb = a.gamma(*pair), b.gamma(*pair)
    both = ~(torch.isnan(ga) | torch.isnan(gb))
    assert both.any() and not torch.allclose(ga[both], gb[both]), name


# ---- selection ---------------------------------------------------------------------------------------

SELECT_MOVED = {"tau": 10.0, "tau_mode": "absolute", "buckets": 1, "flops_range": "end-buckets",
                "snnet_stage_skips": False}
SELECT_ELSEWHERE = {
    "method": "which method runs, not how (tests/test_run.py)", "compare": "which methods run (tests/test_run.py)",
    "chain_rule": "needs three anchors for two chains (tests/test_select.py)",
    "budget_min_route_steps": "klas-budget (tests/test_budget.py)", "budget_max_error_ratio": "klas-budget (same)",
    "predict_images": "klas-budget's predictions (tests/test_budget.py)"}


def test_every_select_setting_is_moved_here_or_where_it_is_named():
    from klas.selection.options import SelectSection

    assert set(_declared_settings(SelectSection)) == set(SELECT_MOVED) | set(SELECT_ELSEWHERE)


@pytest.mark.parametrize("name", sorted(SELECT_MOVED))
def test_a_moved_select_setting_changes_the_selection(name, real_run):
    from klas.scoring.scores import load_scores
    from klas.selection.methods import run_method
    from klas.selection.options import SelectOptions

    scores = load_scores(real_run / "cache" / "scores")
    method = "snnet-nearest" if name == "snnet_stage_skips" else "klas"
    base = SelectOptions(**({"tau": 1.0} if name == "tau_mode" else {}))  # absolute τ = 1 against relative τ = 1
    a = run_method(method, scores, base)
    b = run_method(method, scores, base.replace(**{name: SELECT_MOVED[name]}))
    assert _decisions(a) == _decisions(run_method(method, scores, base))  # comparable: the same twice
    assert _decisions(a) != _decisions(b), name


def _decisions(sel) -> list:
    """What a selection decided per pair: its buckets' edges and thresholds, what it kept."""
    return [(p.edges, [None if math.isnan(t) else round(t, 9) for t in p.tau], [c.route for c in p.selected],
             [c.bucket for c in p.configs]) for p in sel.pairs]
