"""Scores from tensors (klas.pipeline.tensors) against the disk path on the same data: the same
probes recipe and the same Θ code, so Θ, Γ and the selection agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import feature_cache

from klas.errors import UsageError
from klas.pipeline.tensors import AnchorFeatures, scores_from_tensors

WIDTHS = {"small": [8, 12, 16], "large": [8, 8, 12, 16, 16]}


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory):
    from klas.scoring.probes import train_probes
    from klas.scoring.scores import score
    from klas.selection.select import select

    root = tmp_path_factory.mktemp("tensors") / "cache"
    made, anchors = {}, []
    for seed, (name, widths) in enumerate(WIDTHS.items()):
        for split, data_seed, n in (("train", 0, 400), ("val", 1, 200)):
            made[name, split] = feature_cache(root / name / split, n, widths, 5, seed=seed, data_seed=data_seed,
                                              anchor=f"test:{name}", split=split)
        cut = np.cumsum([0, *widths])
        blocks = {s: [torch.from_numpy(made[name, s][0][:, a:b]) for a, b in zip(cut, cut[1:])] for s in ("train", "val")}
        anchors.append(AnchorFeatures(name, flops={"stem": 100, "blocks": [1000 * w for w in widths], "head": 50},
                                      grids=[(4, 4)] * len(widths),
                                      train_blocks=blocks["train"], train_logits=made[name, "train"][0][:, cut[-1]:],
                                      val_blocks=blocks["val"], val_logits=made[name, "val"][0][:, cut[-1]:]))
    sets = train_probes([root / n / "train" for n in WIDTHS], [root / n / "val" for n in WIDTHS], progress=False)
    for ps in sets:
        ps.save(root / "probes")
    disk = score(root, root / "probes")
    memory = scores_from_tensors(anchors, made["small", "train"][1], made["small", "val"][1])
    return disk, memory, select(disk), select(memory)


def test_theta_sigma_gamma_equal_the_disk_paths(both_paths):
    disk, memory, _, _ = both_paths
    assert [a.name for a in memory.anchors] == [a.name for a in disk.anchors] == ["small", "large"]
    assert torch.allclose(memory.theta_all, disk.theta_all, rtol=1e-5, atol=1e-6)  # same code, same rows
    assert torch.allclose(memory.gamma("small", "large"), disk.gamma("small", "large"), rtol=1e-5, atol=1e-6)
    assert torch.allclose(memory.sigma("large"), disk.sigma("large"), rtol=1e-5, atol=1e-6)
    assert [a.flops for a in memory.anchors] == [a.flops for a in disk.anchors]


def test_the_selection_equals_the_disk_paths(both_paths):
    _, _, from_disk, from_memory = both_paths
    assert [c.route for c in from_memory.selected] == [c.route for c in from_disk.selected]
    assert from_memory.chain == from_disk.chain


@pytest.mark.parametrize("edit, message", [
    (lambda a: setattr(a, "grids", a.grids[:-1]), "grids"),
    (lambda a: setattr(a, "train_logits", a.train_logits[:-1]), r"\[N, d_k\]"),
    (lambda a: setattr(a, "flops", {"stem": 1, "blocks": [1], "head": 1}), "FLOPs for 1"),
])
def test_bad_tensors_are_one_clear_error(edit, message):
    n, c = 20, 3
    labels = torch.arange(n) % c
    blocks = [torch.randn(n, 4), torch.randn(n, 4)]

    def anchor(name):
        return AnchorFeatures(name, flops={"stem": 1, "blocks": [1, 1], "head": 1}, grids=[(2, 2), (2, 2)],
                              train_blocks=blocks, train_logits=torch.randn(n, c), val_blocks=blocks,
                              val_logits=torch.randn(n, c))

    a = anchor("a")
    edit(a)
    with pytest.raises(UsageError, match=message):
        scores_from_tensors([a, anchor("b")], labels, labels)


def test_the_readmes_own_models_example_runs_as_written(tmp_path):
    """The README's "Scores from your own tensors" example, extracted and run in a fresh process."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Scores from your own tensors", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert re.findall(r"^(?:from|import) klas.*$", code, re.M) == ["import klas"]  # public names only
    (tmp_path / "example.py").write_text(code)
    done = subprocess.run([sys.executable, str(tmp_path / "example.py")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-2].startswith("[(") and "stitch_configs" not in lines[-1] and lines[-1].startswith("[{")
