#!/bin/bash
# A/B timing of versions of the CPU kernels as Python extensions in one torch process, against torch's own x.sum()
# (ab_torch.py says why: the memory speed this machine gives a torch process swings, and bench_kernels' ratios
# come from one).
#
#   bash benchmarks/ab/ab_torch.sh A B [C ...]   # each a git revision of this checkout or a folder holding csrc/
#   DTYPES=fp32,bf16 CASES="MobileNet-V2 block1;Swin-T" bash benchmarks/ab/ab_torch.sh HEAD .
#
# Each version's nepenthe._cpu is compiled from its own csrc/ (bind_cpu.cpp and count_cpu.cpp) with pybind11's
# headers; the installed nepenthe package supplies the Python side (views, thresholds, reference). Environment:
# ROUNDS (30), MARCH (native), EXTRA_FLAGS, and ab_torch.py's DTYPES, CASES, BATCH, THREADS.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"
ab_begin ab_torch.sh 2 0 "$@"
flags=(-std=c++17 -O3 -fno-math-errno -fno-trapping-math "-march=${MARCH:-native}" -fopenmp -shared -fPIC
       $(python -m pybind11 --includes) ${EXTRA_FLAGS:-})
suffix="$(python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
folders=()
i=0
for spec in "$@"; do
  i=$((i + 1))
  src="$(ab_version "$root" "$spec" "$out/src$i")"
  dest="$out/$i-$(basename "$spec" | tr -c 'A-Za-z0-9_.\n-' '_')"
  mkdir -p "$dest"
  g++ "${flags[@]}" -I"$src/csrc/cpu" -I"$src/csrc/common" "$src/csrc/cpu/bind_cpu.cpp" \
    "$src/csrc/cpu/count_cpu.cpp" -o "$dest/_cpu$suffix" &
  folders+=("$dest")
done
wait
python "$here/ab_torch.py" "${ROUNDS:-30}" "${folders[@]}"
