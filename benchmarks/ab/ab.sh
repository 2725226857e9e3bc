#!/bin/bash
# A/B timing of two versions of csrc/cpu/count_cpu.cpp in one process, interleaved (ab_count_cpu.cpp says how).
#
#   bash benchmarks/ab/ab.sh OLD.cpp NEW.cpp          # e.g. OLD from: git show HEAD:csrc/cpu/count_cpu.cpp > /tmp/old.cpp
#
# Environment: SHAPES ("N C HW layout dtype K" cases separated by ';'), THREADS (2), ROUNDS (100),
# MARCH (native), EXTRA_FLAGS (more compiler flags for both builds). Prints one line per case; B/A < 1 means NEW is
# faster. Builds into a temporary folder.
#
# Check the harness with the same file as OLD and NEW. The native (AVX-512) builds agreed within 2% on every default
# case (2026-11-26). MARCH=x86-64-v3 builds did not: code placement alone made one case 22% faster (fp16
# channels_last, 96 channels), twice in a row. There, EXTRA_FLAGS="-falign-loops=64 -falign-functions=64" brought
# identical builds within 1%.
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: bash benchmarks/ab/ab.sh OLD.cpp NEW.cpp" >&2; exit 2; fi
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flags=(-std=c++17 -O3 -fno-math-errno -fno-trapping-math "-march=${MARCH:-native}" -fopenmp -I"$root/csrc/cpu" -I"$root/csrc/common" ${EXTRA_FLAGS:-})
g++ "${flags[@]}" -Dnepenthe=nepA -c "$1" -o "$out/a.o"
g++ "${flags[@]}" -Dnepenthe=nepB -c "$2" -o "$out/b.o"
g++ "${flags[@]}" "$here/ab_count_cpu.cpp" "$out/a.o" "$out/b.o" -o "$out/ab"
default="32 64 3136 nchw 0 1;32 64 3136 cl 0 1;32 512 49 nchw 0 1;32 512 49 cl 1 1;32 1280 49 nchw 0 2;32 1280 49 cl 0 2;32 96 12544 cl 1 2"
IFS=';' read -ra cases <<< "${SHAPES:-$default}"
for c in "${cases[@]}"; do
  # shellcheck disable=SC2086
  "$out/ab" $c "${THREADS:-2}" "${ROUNDS:-100}"
done
