"""The CUDA kernels count (and activate) exactly when run on the CPU, without a GPU.

``tests/native/cuda_emulation.h`` turns ``csrc/cuda/count_cuda.cu`` into host code: each block runs as one fiber
per CUDA thread, switched at ``__syncthreads`` and warp sums, and the launch plans see a small device (2 SMs, 3
resident blocks each), so grids hold several blocks that each walk several work items.
``tests/native/check_count_cuda.cu`` checks 432 cases per dtype against a scalar reference in double precision:
counting and the fused relu/hardtanh/leaky_relu, NCHW rows short and long (vector path, rows split between work
items, rows off a 16-byte boundary), channels_last with whole and partial 16-byte channel groups, a strided
gather, one to seven thresholds with and without ties. It is built twice: as on sm_90 (float16 and bfloat16
compared in pairs) and as on sm_80 (bfloat16 widened to float32); the three runs go in parallel (about 30 s).

The same emulation also runs as the ``cpu-cuda_emulated`` pair of every ``device_backend`` test
(``tests/conftest.py``, ``tests/cuda_emulated.py``): the count and fused test suites, with their permuted,
expanded, sliced and token layouts, through the real binding and launch code, in about a minute.

What it cannot see: the PTX instructions themselves (``test_kernels_cuda_ptx.py`` checks those), memory
coalescing and timing, and races between blocks (blocks run one after another). The gpu tests cover those on a GPU.
Mutations it catches: a tail counted twice, the low and high halves of a packed counter swapped, relu(-0.0) kept
as -0.0, a channel's last rows dropped, a vector read past the end, ties not subtracted.
"""

from __future__ import annotations

import subprocess

import pytest
from cuda_toolkit import HOST_WARNINGS, ROOT, find_nvcc

NATIVE = ROOT / "tests" / "native"


def _build(nvcc: str, arch: int, exe) -> subprocess.Popen:
    return subprocess.Popen(
        [nvcc, "-std=c++17", "-O2", *HOST_WARNINGS, "-DNEPENTHE_CUDA_EMULATION", f"-DNEPENTHE_EMULATED_ARCH={arch}",
         f"-I{ROOT / 'csrc' / 'cuda'}", f"-I{ROOT / 'csrc' / 'common'}", f"-I{NATIVE}",
         str(NATIVE / "check_count_cuda.cu"), "-o", str(exe)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_emulated_cuda_kernels_match_the_scalar_reference(tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    exes = {arch: tmp_path / f"check_count_cuda_sm{arch // 10}" for arch in (900, 800)}
    builds = {arch: _build(nvcc, arch, exe) for arch, exe in exes.items()}
    for arch, proc in builds.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"sm_{arch // 10} emulation build failed:\n{err[-4000:]}"
    # All dtypes as on sm_90, in two halves, and bfloat16 as on sm_80 (the only dtype whose path differs there).
    runs = [(900, ["0", "1"]), (900, ["2", "3"]), (800, ["2"])]
    procs = [
        subprocess.Popen([str(exes[arch]), *dtypes], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for arch, dtypes in runs
    ]
    for (arch, dtypes), proc in zip(runs, procs, strict=True):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"sm_{arch // 10} dtypes {dtypes}:\n{out[-3000:]}\n{err[-2000:]}"
        assert f"checked {432 * len(dtypes)} cases, 0 mismatched" in out, out[-2000:]
