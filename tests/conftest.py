"""Shared fixtures: small generated image sets, and the shared folder when present."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Triton kernels run on the CPU through the interpreter (set before anything imports triton).
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from make_shapes import write_shapes  # noqa: E402

from klas.settings import cifar10_dir, cifar_resnet_dir  # noqa: E402


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A 10-class folder of 32x32 PNGs, 12 per class."""
    path = tmp_path_factory.mktemp("shapes") / "images"
    write_shapes(path, per_class=12, seed=1)
    return path


@pytest.fixture(scope="session")
def shapes_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shapes") / "images.zip"
    write_shapes(path, per_class=12, seed=1)
    return path


def shared_available() -> bool:
    return (cifar10_dir() / "test.zip").is_file() and (cifar_resnet_dir() / "resnet20.th").is_file()


requires_shared = pytest.mark.skipif(
    not shared_available(), reason="shared CIFAR-10 data/models not found (set KLAS_SHARED)"
)


@pytest.fixture(scope="session")
def real_run(tmp_path_factory, shapes_dir) -> Path:
    """A finished extract -> probes -> score run (read-only: copy it before damaging it)."""
    from helpers import make_real_run

    return make_real_run(tmp_path_factory.mktemp("real"), shapes_dir)


@pytest.fixture(scope="session")
def one_process(tmp_path_factory, shapes_dir) -> Path:
    """The reference: `klas run` in one plain process."""
    from ranks_common import write_run_config

    config = write_run_config(tmp_path_factory.mktemp("one"), shapes_dir)
    done = subprocess.run([sys.executable, "-m", "klas", "run", str(config), "--quiet"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return config.parent / "out"
