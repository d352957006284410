#!/usr/bin/env bash
# One-shot check of minivae's GPU kernels on a machine with an NVIDIA GPU, in under 8 minutes:
#   1. the environment: GPU name, driver, CUDA (driver and runtime), CuPy, Numba, numba-cuda, nvcc;
#   2. the GPU tests: the CUDA C kernels through CuPy (tests/test_kernels_linear_cuda.py's "-cupy"
#      cases, the cupy backend against numpy), the Numba CUDA kernels, and the nvcc builds;
#   3. the benchmarks: `python -m bench kernels` (every op, every backend, against the measured
#      ceilings) and `python -m bench train --quick` (the training step per backend and vs PyTorch).
# Everything printed also goes to bench/results/<gpu>-<date>/ (bench/env.py's naming): environment.txt,
# gpu-tests.txt, kernels-bench.txt, train-bench.txt, and the benchmarks' own JSON, Markdown and PNGs.
#
# It only reads the GPU's state (nvidia-smi queries): no clocks, power limits, persistence or
# compute modes are changed, and no GPU is reset. Run from anywhere: bash bench/gpu_check.sh
# Exit status: 0 when every step that ran passed, 1 when one failed or ran out of time, 2 when no
# GPU is visible (GPU_CHECK_WITHOUT_GPU=1 goes on anyway: a dry run of this script on a CPU machine).
set -u -o pipefail

BUDGET_S=480          # the whole script: 8 minutes
ENV_LIMIT_S=60        # nvidia-smi and the version queries
TESTS_LIMIT_S=300     # pytest; the benchmark gets what is left
MARGIN_S=15           # kept back for writing results after a step is killed

cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python}
if [[ -z ${VIRTUAL_ENV:-} && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; fi
START=$SECONDS
left() { echo $((BUDGET_S - (SECONDS - START) - MARGIN_S)); }

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists no device)" >&2
    [[ ${GPU_CHECK_WITHOUT_GPU:-0} == 1 ]] || exit 2
    GPU_NAME="no-gpu"
else
    GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
fi

OUT=$("$PYTHON" -c "import sys; from bench import env; print(env.results_dir(sys.argv[1]))" "$GPU_NAME") || {
    echo "gpu_check: cannot import bench (run from the repository, with minivae installed)" >&2
    exit 2
}
echo "gpu_check: results in $OUT"
STATUS=0

# ---- 1. environment -------------------------------------------------------------------------------
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(hostname)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    if command -v nvidia-smi >/dev/null; then
        timeout 30 nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total,clocks.max.sm,power.limit \
            --format=csv
        timeout 30 nvidia-smi | grep -m 1 "CUDA Version" | sed 's/^[| ]*/nvidia-smi: /'
    fi
    if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo "nvcc: not on PATH"; fi
    timeout "$ENV_LIMIT_S" "$PYTHON" - <<'EOF'
import importlib.metadata as md
import platform

print(f"python: {platform.python_version()}")
for dist in ("numpy", "cupy", "cupy-cuda12x", "cupy-cuda13x", "numba", "numba-cuda", "cuda-python"):
    try:
        print(f"{dist}: {md.version(dist)}")
    except md.PackageNotFoundError:
        pass
try:
    import cupy

    rt, drv = cupy.cuda.runtime.runtimeGetVersion(), cupy.cuda.runtime.driverGetVersion()
    print(f"CUDA runtime (CuPy): {rt // 1000}.{rt % 1000 // 10}; driver API: {drv // 1000}.{drv % 1000 // 10}")
    for i in range(cupy.cuda.runtime.getDeviceCount()):
        p = cupy.cuda.runtime.getDeviceProperties(i)
        print(f"device {i}: {p['name'].decode()}, sm_{p['major']}{p['minor']}, {p['multiProcessorCount']} SMs, "
              f"{p['totalGlobalMem'] / 2**30:.1f} GiB")
except Exception as e:  # report, do not stop: the tests say what this means
    print(f"cupy: unusable here ({type(e).__name__}: {e})")
try:
    from numba import cuda

    print(f"numba.cuda.is_available(): {cuda.is_available()}")
except Exception as e:
    print(f"numba.cuda: unusable here ({type(e).__name__}: {e})")
from minivae.backends import available

for name, state in available().items():
    print(f"backend {name}: {state}")
EOF
} 2>&1 | tee "$OUT/environment.txt"

# ---- 2. GPU tests -----------------------------------------------------------------------------------
# "not emulat" drops the emulator runs of the linear kernels, and "not trap and not sanitizer" the
# emulator-only fault and sanitizer builds (CI has them all); what stays is the same kernels on the
# GPU through CuPy, the cupy backend against numpy (its latent, Bernoulli and Adam kernels too), the
# Numba CUDA kernels on the GPU, the 20-step training trajectories, the launch checks and the nvcc
# builds. The elementwise CUDA C file runs on the emulator only, so it is left to CI.
LIMIT=$(( $(left) < TESTS_LIMIT_S ? $(left) : TESTS_LIMIT_S ))
echo "== GPU tests (at most ${LIMIT} s)" | tee "$OUT/gpu-tests.txt"
timeout --kill-after=10 "$LIMIT" "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
    tests/test_kernels_linear_cuda.py tests/test_kernels_numba_cuda.py \
    -k "not emulat and not trap and not sanitizer" 2>&1 | tee -a "$OUT/gpu-tests.txt"
rc=$?
if (( rc != 0 )); then
    STATUS=1
    (( rc == 124 || rc == 137 )) && echo "gpu_check: the tests ran out of time (${LIMIT} s)" | tee -a "$OUT/gpu-tests.txt"
fi

# ---- 3. benchmarks ----------------------------------------------------------------------------------
# Every op on every available backend against the measured ceilings (cuBLAS SGEMM peak, copy
# bandwidth), then the whole training step per backend and against PyTorch; each writes its JSON,
# Markdown and plots into the same results folder (MINIVAE_BENCH_OUT). The quick sweep of every
# backend first, so that a slow machine still leaves numbers; then the training step; then the full
# size sweep of the GPU backends alone (the CPU's 8192 x 4096 x 4096 GEMMs would eat the budget).
bench_step() {  # bench_step NAME MIN_SECONDS ARGS...
    local name=$1 need=$2; shift 2
    local limit; limit=$(left)
    echo "== python -m bench $* (at most ${limit} s)" | tee "$OUT/$name.txt"
    if (( limit < need )); then
        echo "gpu_check: skipped, only ${limit} s left" | tee -a "$OUT/$name.txt"
        STATUS=1
        return
    fi
    timeout --kill-after=10 "$limit" "$PYTHON" -m bench "$@" 2>&1 | tee -a "$OUT/$name.txt"
    (( ${PIPESTATUS[0]} == 0 )) || STATUS=1
}
export MINIVAE_BENCH_OUT="$OUT"
bench_step kernels-bench 60 kernels --quick
bench_step train-bench 30 train --quick
GPU_BACKENDS=$("$PYTHON" -c "from minivae.backends import available; \
print(','.join(n for n, s in available().items() if s == 'ok' and n in ('cupy', 'numba-cuda')))")
if [[ -n $GPU_BACKENDS ]]; then
    bench_step kernels-gpu-full-bench 60 kernels --backends "$GPU_BACKENDS" --name kernels-gpu-full
fi

echo "gpu_check: done in $((SECONDS - START)) s, status $STATUS; results in $OUT"
exit "$STATUS"
