#!/usr/bin/env bash
# One offline run on a GPU machine that checks every GPU claim of minivae, in 8 minutes:
#
#     OUT=/some/empty/folder bash bench/gpu_check.sh
#
# The stages (bench/gpu_check.py says what each does): install minivae with no network (pip -e
# without build isolation, or a linked fallback that builds nothing), record the environment and
# where libNVVM is, launch every CUDA C and Numba CUDA kernel once against NumPy (smoke), run the
# GPU test files (one process each, MINIVAE_REQUIRE_GPU=1: nothing skips or falls back to the
# simulator), benchmark the kernels, validate and time every version of every op (the ladder),
# the training step against PyTorch eager on CUDA, then the full GPU size sweep with the time that
# is left.
#
# What it leaves in $OUT, whatever happens (default: bench/results/gpu-check-<UTC date and time>):
# summary.txt (one line per stage: passed / failed / skipped / out of time / no GPU, and the tests'
# counts), gpu-check.tar.gz (every log, JSON-lines result, JUnit XML, table and plot) and a few
# files to read first beside it: at most 8 files of at most 16 MiB, no subfolders.
#
# Needs: python3 (or $PYTHON) with numpy, pytest, hypothesis and minivae's dependencies; CuPy,
# numba and numba-cuda for the GPU; PyTorch (and JAX, if there) as the peers. It changes no GPU
# setting (clocks, power, modes) and resets nothing. Exit status: 0 every stage passed; 1 a stage
# failed or ran out of time; 2 no GPU visible (GPU_CHECK_WITHOUT_GPU=1 makes it a dry run on the
# CPU instead, whose GPU stages say "no GPU", exit 0 when everything else passed).
set -u -o pipefail

BUDGET_S=${GPU_CHECK_BUDGET_S:-480}  # the whole run, packing included: 8 minutes
START=$SECONDS
REPO=$(cd "$(dirname "$0")/.." && pwd) || exit 2
OUT=${OUT:-$REPO/bench/results/gpu-check-$(date -u +%Y-%m-%dT%H%M%SZ)}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)  # before the cd below: a relative OUT is the caller's
cd "$REPO" || exit 2

if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
elif command -v python3 >/dev/null; then
    PY=$(command -v python3)
elif command -v python >/dev/null; then
    PY=$(command -v python)
else
    PY=""
fi
if [[ -z $PY ]]; then
    echo "gpu_check: no python3 on the PATH (set PYTHON to the interpreter to use)" | tee "$OUT/summary.txt" >&2
    exit 2
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
echo "gpu_check: python $PY, results in $OUT, logs in $WORK"

RUNNER=""
# Whatever stops the run (its own deadline, a signal, a crash of the stage runner), what was
# written is packed: the stage runner packs as it ends; if it could not, this does.
finish() {
    local rc=$?
    if [[ -n $RUNNER ]] && kill -0 "$RUNNER" 2>/dev/null; then
        kill -TERM "$RUNNER" 2>/dev/null  # it stops its stages and packs
        for _ in $(seq 30); do kill -0 "$RUNNER" 2>/dev/null || break; sleep 1; done
        kill -KILL "$RUNNER" 2>/dev/null
    fi
    if [[ ! -f $WORK/.packed ]]; then
        tar -czf "$OUT/gpu-check.tar.gz" -C "$WORK" . 2>/dev/null
        if [[ $(stat -c %s "$OUT/gpu-check.tar.gz" 2>/dev/null || echo 0) -gt $((16 * 1024 * 1024)) ]]; then
            tar -czf "$OUT/gpu-check.tar.gz" -C "$WORK" --exclude='*.png' --exclude='*.json' . 2>/dev/null
        fi
        echo "result: failed (the stage runner ended without packing, exit $rc; gpu-check.tar.gz holds what" \
            "it had written)" >> "$OUT/summary.txt"
        (( rc == 0 )) && rc=1
    else
        rm -rf "$WORK"  # all of it is in the archive
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

LEFT=$(( BUDGET_S - (SECONDS - START) ))
# the runner keeps its own deadline; timeout is the backstop should it hang past it (TERM: it packs)
timeout --kill-after=30 "$LEFT" "$PY" bench/gpu_check.py --python "$PY" --work "$WORK" --out "$OUT" \
    --deadline $(( $(date +%s) + LEFT )) &
RUNNER=$!
wait "$RUNNER"
rc=$?
RUNNER=""
exit "$rc"
