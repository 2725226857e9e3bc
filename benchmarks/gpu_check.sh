#!/usr/bin/env bash
# On a GPU machine (no network needed): build nepenthe with its CUDA extension, run the gpu-marked tests and
# the kernel (with the Triton host time a call and the in-place fused activations), profiler and depth-reduction
# benchmarks, and write everything under results/gpu-<UTC date-time>/ (printed at the start and end).
#
#   bash benchmarks/gpu_check.sh            # full benchmark (batch 32)
#   QUICK=1 bash benchmarks/gpu_check.sh    # batch 8, fewer repetitions
#   KERNELS_ONLY=1 bash benchmarks/gpu_check.sh   # skip the profiler and depth-reduction model benchmarks
#   BATCH=128 SWEEP=1 bash benchmarks/gpu_check.sh # kernel benchmark at batch 128, then sweep the Triton launch constants
#     (SWEEP_ARGS="--unroll 1 2 --tiles 8192" passes options to benchmarks/sweep_triton.py; "A; B" runs two sweeps)
#   NO_FUSED=1 bash benchmarks/gpu_check.sh        # kernel benchmark without the fused-activation table
#   AB_OLD=results/old bash benchmarks/gpu_check.sh  # also A/B the CUDA kernels against an older version: a git
#     revision where the checkout has its history, else a folder holding its csrc/ (made by `mkdir -p results/old &&
#     git archive COMMIT csrc | tar -x -C results/old`; results/ is ignored by git, so a device call carries it);
#     AB_FUSED=1 adds the fused kernels' cases (ab_cuda.sh's FUSED_CASES)
#
# Each step is cut off after STEP_TIMEOUT seconds (default 300), the sweep after SWEEP_TIMEOUT (default the
# same). DEADLINE=S (seconds from the start) also cuts every step off by then and skips those that would start
# within 15 s of it, so that the script packs its results before a device call's own limit kills it. PYTHON names
# the interpreter (default python3, else python); the gpu tests run on JOBS pytest-xdist workers (default 8) when
# pytest-xdist is installed. The results folder is also packed into results/<folder>.tgz, and that
# bundle is copied into $OUT when such a folder exists (the device tool's machines return what a command leaves
# there). A CUDA-only build is quicker: NEPENTHE_BUILD_CPU=0 NEPENTHE_CUDA_ARCHS=90.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
STEP_TIMEOUT="${STEP_TIMEOUT:-300}"
# step_within LIMIT CMD...: runs CMD, cut off after LIMIT seconds or at DEADLINE, whichever comes first.
step_within() {
  local limit="$1"
  shift
  if [ -n "${DEADLINE:-}" ]; then
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 15 ]; then
      echo "skipped (${SECONDS} s gone, DEADLINE=${DEADLINE}): $*"
      return 124
    fi
    [ "$left" -lt "$limit" ] && limit="$left"
  fi
  timeout "$limit" "$@"
}
step() { step_within "$STEP_TIMEOUT" "$@"; }
RESULTS="results/gpu-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS"
echo "gpu_check: writing results under $RESULTS"
status=0

{
  date -u
  nvidia-smi || true
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  "$PY" -c "import triton; print('triton', triton.__version__)" || true
  command -v nvcc && nvcc --version | tail -n 2
} >"$RESULTS/environment.txt" 2>&1
cat "$RESULTS/environment.txt"

echo "[${SECONDS} s] == build (pip install --no-build-isolation --no-deps -e .)"
"$PY" -c "import setuptools, pybind11, cmake, ninja" 2>/dev/null \
  || echo "warning: the build needs setuptools, pybind11, cmake and ninja installed (no network here)"
if ! step "$PY" -m pip install --no-build-isolation --no-deps -e . >"$RESULTS/build.log" 2>&1; then
  echo "build failed, see $RESULTS/build.log; testing the sources without compiled extensions"
  tail -n 30 "$RESULTS/build.log"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  status=1
fi
"$PY" -m nepenthe doctor >"$RESULTS/doctor.txt" 2>&1 \
  || "$PY" -c "import nepenthe; [print(s) for s in nepenthe.backend_status()]" >"$RESULTS/doctor.txt" 2>&1
cat "$RESULTS/doctor.txt"

echo "[${SECONDS} s] == gpu tests (pytest -m gpu)"
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "${JOBS:-8}")
step "$PY" -m pytest -m gpu -q -rs "${XDIST[@]}" tests/ --junitxml="$RESULTS/pytest-gpu.xml" 2>&1 | tee "$RESULTS/pytest-gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "[${SECONDS} s] == kernel benchmark"
BENCH_ARGS=(--device cuda --out "$RESULTS/bench_kernels.md")
[ -n "${QUICK:-}" ] && BENCH_ARGS+=(--quick)
[ -n "${BATCH:-}" ] && BENCH_ARGS+=(--batch "$BATCH")
[ -n "${NO_FUSED:-}" ] && BENCH_ARGS+=(--no-fused)
step "$PY" benchmarks/bench_kernels.py "${BENCH_ARGS[@]}" 2>&1 | tee "$RESULTS/bench_kernels.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "[${SECONDS} s] == Triton host time a call (bench_triton_host.py)"
step "$PY" benchmarks/bench_triton_host.py --calls 1000 --out "$RESULTS/triton_host.md" >"$RESULTS/triton_host.txt" 2>&1 \
  || { echo "bench_triton_host.py failed, see $RESULTS/triton_host.txt"; status=1; }
head -n 8 "$RESULTS/triton_host.txt"

echo "[${SECONDS} s] == in-place fused activations (bench_inplace.py --device cuda)"
step "$PY" benchmarks/bench_inplace.py --device cuda 2>&1 | tee "$RESULTS/bench_inplace.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# The A/B before the sweeps: shorter, and what a DEADLINE should least cut off.
if [ -n "${AB_OLD:-}" ]; then
  echo "[${SECONDS} s] == CUDA A/B: $AB_OLD (A) against this checkout's csrc/ (B)"
  FUSED_CASES="${AB_FUSED:-}" step bash benchmarks/ab/ab_cuda.sh "$AB_OLD" . 2>&1 | tee "$RESULTS/ab_cuda.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [ -n "${SWEEP:-}" ]; then
  # SWEEP_ARGS: one sweep's options, or several sweeps' separated by ';', run in turn into one file
  IFS=';' read -d '' -ra SWEEPS <<<"${SWEEP_ARGS:- }" || true  # -d '': the options may span lines
  for sweep_args in "${SWEEPS[@]}"; do
    echo "[${SECONDS} s] == Triton launch-constant sweep:${sweep_args}"
    # shellcheck disable=SC2086 # the sweep's own options, split on spaces
    step_within "${SWEEP_TIMEOUT:-$STEP_TIMEOUT}" "$PY" benchmarks/sweep_triton.py $sweep_args 2>&1 | tee -a "$RESULTS/sweep_triton.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  done
fi

if [ -z "${KERNELS_ONLY:-}" ]; then
  echo "[${SECONDS} s] == profiler overhead (batch 128, autocast bf16)"
  step "$PY" benchmarks/bench_profiler.py --device cuda 2>&1 | tee "$RESULTS/bench_profiler.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1

  echo "[${SECONDS} s] == depth reduction latency"
  step "$PY" benchmarks/bench_shrink.py --device cuda --json "$RESULTS/bench_shrink.json" 2>&1 | tee "$RESULTS/bench_shrink.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

tar czf "$RESULTS.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
# A device machine's command gets an OUT folder whose files come back: leave the bundle there too.
[ -n "${OUT:-}" ] && [ -d "$OUT" ] && cp "$RESULTS.tgz" "$OUT/"
echo "gpu_check: results in $RESULTS and $RESULTS.tgz (exit status $status)"
exit "$status"
