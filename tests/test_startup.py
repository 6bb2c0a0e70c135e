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
