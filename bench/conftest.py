"""Options and fixtures of the benchmark suites (`pytest bench/ ...`).

    --bench-scale full|smoke   full: the sizes the results are quoted at; smoke: tiny sizes that only
                               check the suites run and their peers agree (the test suite uses it)
    --bench-device cpu|cuda    where Θ and bench_compile's inference and training are benchmarked
                               (default: cuda when available)
    --bench-data DIR           images for extraction and finetuning (default: the shared CIFAR-10,
                               else the generated shapes shipped in examples/)
    --bench-cache DIR          an extraction output whose train caches the probe benchmark reads
                               (default: synthetic caches of the same layout)
    --bench-dir DIR            where the reader benchmark keeps its cache (default: a folder in /tmp)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("KLAS_SHARED", str(ROOT.parent / "shared"))

from common import machine


def pytest_addoption(parser):
    group = parser.getgroup("klas benchmarks")
    group.addoption("--bench-scale", choices=("full", "smoke"), default="full",
                    help="full: the sizes results are quoted at; smoke: tiny sizes (default: full)")
    group.addoption("--bench-device", default=None, help="device for the Θ benchmark and bench_compile's inference and "
                    "training groups (default: cuda if available)")
    group.addoption("--bench-data", default=None, help="image folder for extraction and finetuning "
                    "(default: the shared CIFAR-10, else examples/shapes.zip)")
    group.addoption("--bench-cache", default=None, help="extraction output with train caches for the probe "
                    "benchmark (default: synthetic caches)")
    group.addoption("--bench-dir", default="/tmp/klas-bench-cache", help="folder for the reader benchmark's cache "
                    "(default: /tmp/klas-bench-cache)")


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["klas"] = machine()
    machine_info["klas"]["scale"] = config.getoption("--bench-scale")


@pytest.fixture(scope="session")
def smoke(request) -> bool:
    return request.config.getoption("--bench-scale") == "smoke"


@pytest.fixture(scope="session")
def device(request):
    import torch

    name = request.config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.exit(f"--bench-device {name}: no CUDA device here; use --bench-device cpu", returncode=4)
    return torch.device(name)


@pytest.fixture(scope="session")
def image_root(request) -> Path:
    from klas.settings import cifar10_dir

    given = request.config.getoption("--bench-data")
    if given:
        path = Path(given)
        if not path.exists():
            pytest.exit(f"--bench-data {path}: no such folder or file", returncode=4)
        return path
    if request.config.getoption("--bench-scale") != "smoke" and (cifar10_dir() / "train.zip").exists():
        return cifar10_dir()
    return ROOT / "examples" / "shapes.zip"
