#!/usr/bin/env bash
# On a GPU machine (no network needed): build nepenthe with its CUDA extension, run the gpu-marked tests and
# the kernel, profiler and depth-reduction benchmarks, and write everything under results/gpu-<UTC date-time>/ (printed at the start and end).
#
#   bash benchmarks/gpu_check.sh            # full benchmark (batch 32)
#   QUICK=1 bash benchmarks/gpu_check.sh    # batch 8, fewer repetitions
#   KERNELS_ONLY=1 bash benchmarks/gpu_check.sh   # skip the profiler and depth-reduction model benchmarks
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="results/gpu-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
echo "gpu_check: writing results under $OUT"
status=0

{
  date -u
  nvidia-smi || true
  python -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  python -c "import triton; print('triton', triton.__version__)" || true
  command -v nvcc && nvcc --version | tail -n 2
} >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

echo "== build (pip install --no-build-isolation --no-deps -e .)"
python -c "import setuptools, pybind11, cmake, ninja" 2>/dev/null \
  || echo "warning: the build needs setuptools, pybind11, cmake and ninja installed (no network here)"
if ! pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  echo "build failed, see $OUT/build.log; testing the sources without compiled extensions"
  tail -n 30 "$OUT/build.log"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  status=1
fi
python -m nepenthe doctor >"$OUT/doctor.txt" 2>&1 \
  || python -c "import nepenthe; [print(s) for s in nepenthe.backend_status()]" >"$OUT/doctor.txt" 2>&1
cat "$OUT/doctor.txt"

echo "== gpu tests (pytest -m gpu)"
python -m pytest -m gpu -q -rs tests/ --junitxml="$OUT/pytest-gpu.xml" 2>&1 | tee "$OUT/pytest-gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== kernel benchmark"
BENCH_ARGS=(--device cuda --out "$OUT/bench_kernels.md")
[ -n "${QUICK:-}" ] && BENCH_ARGS+=(--quick)
python benchmarks/bench_kernels.py "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/bench_kernels.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if [ -z "${KERNELS_ONLY:-}" ]; then
  echo "== profiler overhead (batch 128, autocast bf16)"
  python benchmarks/bench_profiler.py --device cuda 2>&1 | tee "$OUT/bench_profiler.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1

  echo "== depth reduction latency"
  python benchmarks/bench_shrink.py --device cuda --json "$OUT/bench_shrink.json" 2>&1 | tee "$OUT/bench_shrink.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

echo "gpu_check: results in $OUT (exit status $status)"
exit "$status"
