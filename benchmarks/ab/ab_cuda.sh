#!/bin/bash
# A/B timing of two versions of csrc/cuda/count_cuda.cu in one process on one GPU (ab_count_cuda.cu says how),
# with each build's counts checked against the host's first.
#
#   git show HEAD~1:csrc/cuda/count_cuda.cu > /tmp/old.cu        # its compare_ops.cuh, if any, must match
#   bash benchmarks/ab/ab_cuda.sh /tmp/old.cu csrc/cuda/count_cuda.cu
#
# Environment: SHAPES ("N C HW layout dtype K" cases separated by ';'; the defaults are 100-300 MB, larger than
# an H100's or H200's L2), ROUNDS (15), ARCH (native: the GPU of this machine; sm_90 to compile without one),
# BUILD_ONLY=1 (compile and stop). Prints one line per case; B/A < 1 means NEW is faster; exits 1 if a build's
# counts are wrong. Both files are compiled against this checkout's csrc/cuda and csrc/common headers.
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: bash benchmarks/ab/ab_cuda.sh OLD.cu NEW.cu" >&2; exit 2; fi
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
nvcc="$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")"
flags=(-std=c++17 -O3 "-arch=${ARCH:-native}" -I"$root/csrc/cuda" -I"$root/csrc/common" -I"$here")
"$nvcc" "${flags[@]}" -Dnepenthe=nepA -c "$1" -o "$out/a.o"
"$nvcc" "${flags[@]}" -Dnepenthe=nepB -c "$2" -o "$out/b.o"
"$nvcc" "${flags[@]}" "$here/ab_count_cuda.cu" "$out/a.o" "$out/b.o" -o "$out/ab"
if [ -n "${BUILD_ONLY:-}" ]; then echo "ab_cuda: built"; exit 0; fi
default="128 64 3136 nchw 0 1;256 64 3136 nchw 1 1;256 64 3136 nchw 2 1;128 64 3136 cl 0 1;256 64 3136 cl 1 1"
default+=";256 64 3136 cl 2 1;128 96 12544 cl 1 2;128 96 12544 nchw 2 2;128 96 3136 cl 0 1;128 96 3136 cl 2 1"
IFS=';' read -ra cases <<< "${SHAPES:-$default}"
status=0
for c in "${cases[@]}"; do
  # shellcheck disable=SC2086
  "$out/ab" $c "${ROUNDS:-15}" || status=1
done
exit $status
