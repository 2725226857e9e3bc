#!/bin/bash
# A/B timing of two versions of the CUDA kernels (csrc/cuda/count_cuda.cu and the headers it includes) in one
# process on one GPU (ab_count_cuda.cu says how), with each build's counts checked against the host's first.
#
#   bash benchmarks/ab/ab_cuda.sh A B      # each a git revision of this checkout (HEAD~1, 0ba2282) or a folder
#                                          # that holds a csrc/ tree (. for the working tree): versions.sh
#   bash benchmarks/ab/ab_cuda.sh HEAD~1 . # e.g. the commit before the last (A) against the working tree (B)
#
# Environment: SHAPES ("N C HW layout dtype K" cases separated by ';'; the defaults are 100-300 MB, larger than
# an H100's or H200's L2), ROUNDS (15), ARCH (native: the GPU of this machine; sm_90 to compile without one),
# BUILD_ONLY=1 (compile and stop), FUSED (relu, relu6 or gelu: time the fused kernels of every case, against a
# copy of the same bytes), FUSED_CASES=1 (add fused cases to the list: ResNet-18's relu, MobileNet-V2's relu6 and
# Swin-T's GELU, each 16-bit and float32). A case may name its own activation as a seventh field. Prints one line per case; B/A < 1 means B is faster; exits 1 if a build's
# counts are wrong. Each version is compiled from its own csrc/ (count_cuda.cu with -I its csrc/cuda and
# csrc/common), the harness from this checkout's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"
ab_begin ab_cuda.sh 2 2 "$@"
a="$(ab_version "$root" "$1" "$out/a")"
b="$(ab_version "$root" "$2" "$out/b")"
nvcc="$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")"
flags=(-std=c++17 -O3 "-arch=${ARCH:-native}")
# The two versions compile at once (about 30 s each for sm_90 on one core).
"$nvcc" "${flags[@]}" -I"$a/csrc/cuda" -I"$a/csrc/common" -Dnepenthe=nepA -c "$a/csrc/cuda/count_cuda.cu" \
  -o "$out/a.o" &
build_a=$!
"$nvcc" "${flags[@]}" -I"$b/csrc/cuda" -I"$b/csrc/common" -Dnepenthe=nepB -c "$b/csrc/cuda/count_cuda.cu" \
  -o "$out/b.o"
wait "$build_a"
"$nvcc" "${flags[@]}" -I"$root/csrc/cuda" -I"$root/csrc/common" -I"$here" "$here/ab_count_cuda.cu" \
  "$out/a.o" "$out/b.o" -o "$out/ab"
if [ -n "${BUILD_ONLY:-}" ]; then echo "ab_cuda: built"; exit 0; fi
default="128 64 3136 nchw 0 1;256 64 3136 nchw 1 1;256 64 3136 nchw 2 1;128 64 3136 cl 0 1;256 64 3136 cl 1 1"
default+=";256 64 3136 cl 2 1;128 96 12544 cl 1 2;128 96 12544 nchw 2 2;128 96 3136 cl 0 1;128 96 3136 cl 2 1"
default+=";128 384 3136 cl 0 1;128 384 3136 cl 1 1"  # Swin-T stage 1 MLP tokens, 384 channels
fused="256 64 3136 nchw 1 1 relu;128 64 3136 nchw 0 1 relu;128 96 12544 nchw 1 2 relu6;128 96 12544 cl 2 2 relu6"
fused+=";128 96 12544 nchw 0 2 relu6;128 384 3136 cl 1 1 gelu;128 384 3136 cl 2 1 gelu;128 384 3136 cl 0 1 gelu"
list="${SHAPES:-$default}"
[ -n "${FUSED_CASES:-}" ] && list+=";$fused"
IFS=';' read -ra cases <<< "$list"
status=0
for c in "${cases[@]}"; do
  read -ra f <<< "$c"
  "$out/ab" "${f[@]:0:6}" "${ROUNDS:-15}" "${f[6]:-${FUSED:-none}}" || status=1
done
exit $status
