#!/bin/bash
# A/B timing of two versions of the CPU kernels (csrc/cpu/count_cpu.cpp and the headers it includes) in one
# process, interleaved (ab_count_cpu.cpp says how).
#
#   bash benchmarks/ab/ab.sh A B       # each a git revision of this checkout (HEAD~2, 0ba2282) or a folder that
#                                      # holds a csrc/ tree (. for the working tree, a copy in /tmp): versions.sh
#   bash benchmarks/ab/ab.sh HEAD .    # e.g. the last commit (A) against the working tree (B)
#
# Each version is compiled from its own csrc/ (count_cpu.cpp with -I its csrc/cpu and csrc/common), the harness
# from this checkout's. Environment: SHAPES ("N C HW layout dtype K" cases separated by ';'), THREADS (2),
# ROUNDS (100), MARCH (native), EXTRA_FLAGS (more compiler flags for both builds). Prints one line per case; B/A < 1
# means B is faster. Builds into a temporary folder.
#
# Check the harness with the same version as A and B. The native (AVX-512) builds agreed within 2% on every default
# case (2026-11-26). MARCH=x86-64-v3 builds did not: code placement alone made one case 22% faster (fp16
# channels_last, 96 channels), twice in a row. There, EXTRA_FLAGS="-falign-loops=64 -falign-functions=64" brought
# identical builds within 1%.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"
ab_begin ab.sh 2 2 "$@"
a="$(ab_version "$root" "$1" "$out/a")"
b="$(ab_version "$root" "$2" "$out/b")"
flags=(-std=c++17 -O3 -fno-math-errno -fno-trapping-math "-march=${MARCH:-native}" -fopenmp ${EXTRA_FLAGS:-})
g++ "${flags[@]}" -I"$a/csrc/cpu" -I"$a/csrc/common" -Dnepenthe=nepA -c "$a/csrc/cpu/count_cpu.cpp" -o "$out/a.o"
g++ "${flags[@]}" -I"$b/csrc/cpu" -I"$b/csrc/common" -Dnepenthe=nepB -c "$b/csrc/cpu/count_cpu.cpp" -o "$out/b.o"
g++ "${flags[@]}" -I"$root/csrc/cpu" -I"$root/csrc/common" "$here/ab_count_cpu.cpp" "$out/a.o" "$out/b.o" -o "$out/ab"
default="32 64 3136 nchw 0 1;32 64 3136 cl 0 1;32 512 49 nchw 0 1;32 512 49 cl 1 1;32 1280 49 nchw 0 2;32 1280 49 cl 0 2;32 96 12544 cl 1 2"
IFS=';' read -ra cases <<< "${SHAPES:-$default}"
for c in "${cases[@]}"; do
  # shellcheck disable=SC2086
  "$out/ab" $c "${THREADS:-2}" "${ROUNDS:-100}"
done
