#!/usr/bin/env bash
# One call on a GPU machine (well under 5 minutes): Triton kernels checked against float64 on CUDA,
# then the Θ benchmark (naive vs torch vs Triton, Liger-Kernel where installed). The table prints last
# and is appended to bench/RESULTS.md with the GPU's name.
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Without an install, klas.kernels (the kernels/ folder) is not importable: link it for this run.
[ -e klas/kernels ] || ln -s ../kernels klas/kernels
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 bench/gpu_correctness.py
python3 bench/bench_kl.py --device cuda --repeats 5
