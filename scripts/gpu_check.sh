#!/usr/bin/env bash
# GPU check of the "cuda" backend (refdcn/backends/cuda/): its tests on the real device, then the
# GPU benchmark (refdcn beside torchvision's CUDA op, same run).  One command, a few minutes:
#
#     bash scripts/gpu_check.sh            # tests + benchmark on all default shapes
#     bash scripts/gpu_check.sh --quick    # tests + benchmark on the three GPU shapes only
#
# Run it from the repository root on a machine with an NVIDIA GPU and a python3 that has
# numba and numba-cuda (plus, for the full picture, CuPy for cuBLAS and torch +
# torchvision with CUDA for the comparison).  Logs go to $OUT (if set) or
# /tmp/refdcn-gpu-check: env.txt, test_cuda.log, bench.log.
#
# NumPy: numba-cuda 0.30.4 / numba 0.68 do not work with NumPy 2.5.  Where the machine's
# python has NumPy 2.5, put a NumPy 2.4 wheel for that python into .whl/ (git-ignored)
# before going to the GPU machine; this script installs it into /tmp/site and puts it
# first on PYTHONPATH.  For CPython 3.12 on x86-64:
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_28_x86_64 \
#         --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl numpy==2.4.4
#
# (.whl/ is ignored by git: a tool that copies the working tree to the GPU machine must be
# told to carry it, e.g. carry=[".whl"].)
set -uo pipefail

cd "$(dirname "$0")/.."
LOG="${OUT:-/tmp/refdcn-gpu-check}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"

export PYTHONPATH="$PWD"
if ls .whl/*.whl >/dev/null 2>&1; then
    if "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; then
        export PYTHONPATH="/tmp/site:$PWD"
    else
        echo "warning: the wheels in .whl/ do not install for $PY; using its own packages"
    fi
fi
# the tests must run on the device: never on the simulator here
unset NUMBA_ENABLE_CUDASIM

{
    echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    "$PY" - <<'EOF'
import sys
print("python", sys.version.split()[0])
for name in ("numpy", "numba", "numba_cuda", "cupy", "torch", "torchvision", "pytest"):
    try:
        module = __import__(name)
        print(f"{name:12s}", getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:
        print(f"{name:12s} NOT AVAILABLE ({type(exc).__name__}: {exc})")
from numba import cuda
print("numba.cuda.is_available():", cuda.is_available())
if cuda.is_available():
    d = cuda.get_current_device()
    print("device:", d.name, "compute capability", d.compute_capability)
from refdcn import backends
print("refdcn backends:", backends.available(), backends.unavailable().get("cuda", ""))
EOF
} 2>&1 | tee "$LOG/env.txt"

echo "== tests/test_cuda.py, and the one backend suite for cuda, on the device" \
    | tee "$LOG/test_cuda.log"
timeout 420 "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider -rs --durations=10 2>&1 \
    | tee -a "$LOG/test_cuda.log"
rc_tests=${PIPESTATUS[0]}
# the parametrised suite skips the simulator (too slow); on a GPU it runs the cuda backend too
timeout 420 "$PY" -m pytest tests/test_backends.py -q -p no:cacheprovider -rs -k cuda 2>&1 \
    | tee -a "$LOG/test_cuda.log"
rc_suite=${PIPESTATUS[0]}
if [ "$rc_tests" -eq 0 ] && [ "$rc_suite" -ne 0 ]; then
    rc_tests=$rc_suite
fi

echo "== GPU benchmark" | tee "$LOG/bench.log"
timeout 480 "$PY" -m refdcn.benchmarks.gpu "$@" 2>&1 | tee -a "$LOG/bench.log"
rc_bench=${PIPESTATUS[0]}

echo "== gpu_check: tests exit $rc_tests, benchmark exit $rc_bench (logs in $LOG)"
if [ "$rc_tests" -ne 0 ] || [ "$rc_bench" -ne 0 ]; then
    exit 1
fi
