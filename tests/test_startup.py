"""`klas --help`, `klas --version` and `import klas` answer without importing torch (they start in
a fraction of the seconds torch takes to load)."""
from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys
try:
    {body}
except SystemExit:  # argparse ends --help and --version so
    pass
heavy = sorted(m for m in ("torch", "numpy", "timm", "triton") if m in sys.modules)
assert not heavy, heavy
print("checked")
"""


@pytest.mark.parametrize("body", [
    "from klas.pipeline.cli import main; main(['--help'])",
    "from klas.pipeline.cli import main; main(['--version'])",
    "from klas.pipeline.cli import main; main(['run', '--help'])",
    "import klas; assert klas.__version__ and 'kl_matrix' in klas.__all__",
], ids=["help", "version", "run-help", "import"])
def test_the_command_starts_without_torch(body):
    done = subprocess.run([sys.executable, "-c", _PROBE.format(body=body)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("checked"), done.stderr


def test_python_m_klas_help_starts_without_torch():
    code = "import runpy, sys\nsys.argv = ['klas', '--help']\ntry:\n    runpy.run_module('klas', run_name='__main__')\n" \
           "except SystemExit:\n    pass\nassert 'torch' not in sys.modules\nprint('checked')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("checked"), done.stderr


def test_the_lazy_names_still_load():
    import klas

    assert callable(klas.kl_matrix) and callable(klas.load_anchor)


def test_a_public_name_that_is_also_a_submodule_is_the_function():
    """`from klas.selection import select` is the selection function even after the submodule of the
    same name was imported (by klas itself or by the user); the module stays importable."""
    code = ("import klas.selection.methods\nfrom klas.selection.select import configurations\n"
            "from klas.selection import select\nimport sys, types\n"
            "assert callable(select) and not isinstance(select, types.ModuleType), select\n"
            "assert select.__module__ == 'klas.selection.select'\n"
            "assert isinstance(sys.modules['klas.selection.select'], types.ModuleType)\nprint('checked')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("checked"), done.stderr


def test_print_config_shows_the_effective_config_and_runs_nothing(tmp_path, capsys):
    """`klas run CONFIG --print-config`: defaults filled in, --set applied, and the printed YAML is a
    config that validates to the same settings; nothing is written."""
    import yaml

    from klas.pipeline.cli import main
    from klas.pipeline.config import load_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "anchors": ["cifar-resnet:8", "cifar-resnet:14"],
                                   "data": {"root": str(tmp_path)}}))
    capsys.readouterr()
    assert main(["run", str(cfg), "--set", "finetune.steps=7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["finetune"]["steps"] == 7 and printed["probes"]["epochs"] == 4  # set, and a default
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(printed))
    assert load_config(again).to_json() == printed
    assert not (tmp_path / "out").exists()


def test_every_public_name_is_documented_in_its_layer():
    import klas

    doc = klas.__doc__
    tensors, files = doc.index("Tensors:"), doc.index("Files:")
    for name in klas.__all__:
        if name == "__version__":
            continue
        assert f"{name}" in doc, f"klas.{name} is not described in klas's docstring"
        assert getattr(klas, name).__doc__, f"klas.{name} has no docstring"
    assert tensors < doc.index("scores_from_tensors(") < files < doc.index("extract(")
