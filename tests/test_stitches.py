"""The stitch's one home (klas.stitches): its identity, its index rule, the scored configurations,
and the layering of klas/ (no package imports one above it, so there is no cycle)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from klas.stitches import Route, route_index_problem, scored_pairs

ROOT = Path(__file__).resolve().parents[1]
# packages from the bottom up: a module may import its own package, the ground floor and those below
LAYERS = ["anchors", "cache", "extraction", "scoring", "selection", "stitching", "evaluation", "pipeline"]


def test_a_route_is_one_identity_for_tuples_configurations_and_results():
    from klas.evaluation.evaluate import RouteResult
    from klas.selection.select import Config

    r = Route("a", "b", 2, 3)
    assert Route.of(("a", "b", 2, 3)) == r == Route.of(r)
    assert Config("a", "b", 2, 3, 10, 0.1, 0.2, 0.5).route == r
    assert RouteResult("a:2->b:3", "a", "b", 2, 3, 10, 5, 50.0, 1, 2).route == r
    assert r.name == "a:2->b:3" and not r.is_anchor and Route("a", "a", 4, 4).name == "a"


@pytest.mark.parametrize("i, j, ok", [
    (1, 0, True), (4, 0, True), (4, 5, True), (1, 5, True),  # SN-Net's j = 0 and i = m_f are routes
    (0, 1, False), (5, 1, False), (1, 6, False), (1, -1, False), (True, 1, False), (1.0, 1, False),
])
def test_the_route_index_rule(i, j, ok):
    assert (route_index_problem(i, j, 4, 6) is None) == ok


def test_scored_pairs_are_inner_blocks_on_equal_grids():
    f = [(8, 8), (4, 4), (4, 4), (2, 2)]
    g = [(8, 8), (8, 8), (4, 4), (2, 2), (2, 2)]
    assert scored_pairs(f, g) == [(1, 1), (1, 2), (2, 3), (3, 3)]  # i <= 3, j <= 4, grids equal


def test_an_snnet_selection_round_trips_through_snnet_form(real_run):
    """Every stitch an SN-Net selection holds (i = m_f and j = 0 included) survives export and import."""
    from klas.scoring.scores import load_scores
    from klas.selection.export import from_snnet, to_snnet
    from klas.selection.select import select_snnet_nearest

    scores = load_scores(real_run / "cache" / "scores")
    sel = select_snnet_nearest(scores)
    back = from_snnet(to_snnet(sel), scores)
    assert [c.route for c in back.selected] == [c.route for c in sel.selected]
    assert [c.flops for c in back.selected] == [c.flops for c in sel.selected]
    # after ResNet-8's last block (i = m_f = 3, SN-Net's a = 2) into ResNet-14's block 6 (8x8 both)
    doc = to_snnet(sel)
    doc["stitch_configs"][0]["configs"].append([2, 5])
    assert Route("cifar-resnet8", "cifar-resnet14", 3, 5) in [c.route for c in from_snnet(doc, scores).selected]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_no_module_of_klas_imports_a_layer_above_its_own():
    upward = []
    for path in sorted((ROOT / "klas").rglob("*.py")):
        rel = path.relative_to(ROOT / "klas").parts
        if len(rel) == 1 and rel[0] in ("__init__.py", "__main__.py"):
            continue  # the package's front door sits on top of everything
        own = LAYERS.index(rel[0]) if len(rel) > 1 and rel[0] in LAYERS else -1  # -1: the ground floor
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "klas" and len(parts) > 1 and parts[1] in LAYERS and LAYERS.index(parts[1]) > own:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not upward, upward


def test_the_temperature_reaches_every_method_that_measures_a_divergence(real_run, tmp_path):
    """Θ scored at τ = 1 and τ = 3: KLAS's Γ, kl-ls and ce move with it; the feature metrics (CKA, MSE,
    DM) do not read τ and stay equal."""
    import math

    import torch

    from klas.scoring.scores import load_scores, score
    from klas.selection.metric_tables import metric_numerators

    cache = real_run / "cache"
    tables = {}
    for t in (1.0, 3.0):
        score(cache, cache / "probes", tmp_path / f"t{t}", temperature=t, plots=False)
        scores = load_scores(tmp_path / f"t{t}")
        assert scores.temperature == t
        pair = (scores.anchors[0].name, scores.anchors[1].name)
        tables[t] = {"klas": scores.gamma(*pair)}
        for metric in ("kl-ls", "ce", "cka", "mse", "dm"):
            tables[t][metric] = metric_numerators(scores, metric, cache)(*pair)
    for method in tables[1.0]:
        a, b = tables[1.0][method], tables[3.0][method]
        both = ~(torch.isnan(a) | torch.isnan(b))
        assert both.any(), method
        moved = not torch.allclose(a[both], b[both], rtol=1e-4, atol=1e-7)
        assert moved == (method in ("klas", "kl-ls", "ce")), (method, a, b)
        assert all(math.isfinite(v) for v in a[both].tolist())
