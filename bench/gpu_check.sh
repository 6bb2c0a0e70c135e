#!/usr/bin/env bash
# One call on a GPU machine (a few minutes, most of it compiling): Triton kernels checked against float64 on CUDA,
# then the Θ benchmark suite on CUDA (naive vs torch vs Triton, Liger-Kernel where installed), then
# torch.compile against eager on CUDA (bench_compile.py), then channels-last against contiguous models
# on CUDA (bench_memory_format.py: what `memory_format: auto` should pick there). The runs' JSON goes to $OUT (or /tmp) and
# their tables print, with the GPU's name; nothing in the working tree is written.
#   bash bench/gpu_check.sh
# pytest and pytest-benchmark must be importable. On a machine without a package index, install them
# beside the checkout first (`pip install --target .bench-deps pytest pytest-benchmark`, an ignored
# folder) and bring that folder along: it is put on the path when present.
set -euo pipefail
cd "$(dirname "$0")/.."
# Without an install, klas.kernels (the kernels/ folder) is not importable: link it for this run.
[ -e klas/kernels ] || ln -s ../kernels klas/kernels
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .bench-deps ] && export PYTHONPATH="$PYTHONPATH:$PWD/.bench-deps"
json="${OUT:-/tmp}/bench-kl-cuda.json"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 bench/gpu_correctness.py
python3 -m pytest bench/bench_kl.py --bench-device cuda -p no:cacheprovider -q --benchmark-json="$json"
python3 bench/report.py "$json" --title "Θ (kl_matrix) on CUDA: naive vs torch vs triton"
# compiled against eager on the GPU (ResNet-56 inference and training steps), with the compile time
compiled="${OUT:-/tmp}/bench-compile-cuda.json"
python3 -m pytest bench/bench_compile.py --bench-device cuda -k "inference or training" -p no:cacheprovider -q \
    --benchmark-json="$compiled"
python3 bench/report.py "$compiled" --title "compiled against eager on CUDA (ResNet-56)"
# channels last against contiguous on the GPU (ResNet-56 inference, eager and compiled, and training steps)
layout="${OUT:-/tmp}/bench-memory-format-cuda.json"
python3 -m pytest bench/bench_memory_format.py --bench-device cuda -k "inference or training" -p no:cacheprovider -q \
    --benchmark-json="$layout"
python3 bench/report.py "$layout" --title "channels last against contiguous on CUDA (ResNet-56)"
