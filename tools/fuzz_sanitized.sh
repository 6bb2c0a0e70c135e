#!/usr/bin/env bash
# Fuzz the native cache reader under AddressSanitizer + UBSan.
#
#   bash tools/fuzz_sanitized.sh [EXAMPLES] [PYTEST ARGS...]
#
# EXAMPLES: hypothesis examples per fuzz test (default 10000; e.g. 200000 for a long run).
# PYTEST ARGS: what to run (default tests/test_fuzz.py); e.g. `tests/test_kl.py -k native` runs
# the native Θ kernel's tests under the sanitizers.
#
# Builds klas._C with KLAS_SANITIZE=1 into a scratch copy of the sources (the installed build is
# left alone), then runs the tests against that copy with libasan preloaded. Any memory error or
# undefined behaviour aborts the run with a report.
set -euo pipefail
EXAMPLES=${1:-10000}
shift || true
TESTS=("${@:-tests/test_fuzz.py}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -r "$ROOT/csrc" "$ROOT/klas" "$ROOT/tests" "$ROOT/examples" "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/"
rm -f "$WORK"/klas/_C*.so
(cd "$WORK" && KLAS_SANITIZE=1 "$PY" setup.py -q build_ext --inplace >/dev/null)
# libstdc++ preloaded too, so that the sanitizer finds the real __cxa_throw (python itself is C)
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH=$WORK KLAS_FUZZ_EXAMPLES=$EXAMPLES
cd "$WORK"
"$PY" -c "import klas._C as c; print('sanitized extension:', c.__file__)"
"$PY" -m pytest -q -s -p no:cacheprovider "${TESTS[@]}"  # -s: a sanitizer report must reach the terminal
