"""The CUDA counting kernels, compiled to PTX for sm_90 without a GPU, keep their memory access pattern.

The first CUDA kernels issued one load at a time per thread, and in channels_last one scalar per thread; on an
H200 they read at 0.4-2 TB/s where ``x.sum()`` reads at 3.8 (benchmarks/README.md). The counting kernels now keep
``kUnroll`` (4) 16-byte loads in flight per thread. This test compiles ``csrc/cuda/count_cuda.cu`` with nvcc (as
the build does, here to PTX only) and checks, for every counting instantiation: four 16-byte read-only loads
(``ld.global.nc.v4``), and no local-memory arrays. It skips where nvcc is missing; the GPU tests check the counts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cuda" / "count_cuda.cu"
DTYPES = ("f", "d", "6__half", "13__nv_bfloat16")  # mangled float, double, __half, __nv_bfloat16
# kernel name, element type, then the NT and kFused template arguments where the kernel has them
MANGLED = re.compile(r"(rows_kernel|channels_vec_kernel|channels_kernel)I(\w+?)(?:Li(\d)E)?(?:Lb(\d)E)?EEvN")


def _nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> dict[str, str]:
    """PTX body of each kernel entry, by short name such as ``rows_kernel<f,1,false>``."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    out = tmp_path_factory.mktemp("ptx") / "count_cuda.ptx"
    proc = subprocess.run(
        [nvcc, "-std=c++17", "-O3", "-arch=sm_90", "-ptx", str(SOURCE), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    bodies = {}
    for chunk in re.split(r"\n(?=\.visible \.entry|\.entry)", out.read_text()):
        match = re.search(r"\.entry (\S+)\(", chunk)
        if not match:
            continue
        short = MANGLED.search(match.group(1))
        assert short, match.group(1)
        kernel, dtype, nt, fused = short.groups()
        args = [dtype] + ([nt] if nt is not None else []) + ([("false", "true")[int(fused)]] if fused else [])
        bodies[f"{kernel}<{','.join(args)}>"] = chunk
    return bodies


def _counting_kernels(kernels: dict[str, str]) -> list[str]:
    return [name for name in kernels if name.startswith("channels_vec_kernel") or name.endswith(",false>")]


def test_every_dtype_and_threshold_variant_is_compiled(kernels):
    for dtype in DTYPES:
        for nt in ("0", "1", "2"):
            assert f"rows_kernel<{dtype},{nt},false>" in kernels, sorted(kernels)
        for nt in ("1", "2"):
            assert any(name.startswith(f"channels_vec_kernel<{dtype},{nt}") for name in kernels), sorted(kernels)


def test_counting_kernels_keep_four_vector_loads_in_flight(kernels):
    names = _counting_kernels(kernels)
    assert len(names) >= 20, names
    for name in names:
        loads = re.findall(r"ld\.global\.nc\.v4\.\w+", kernels[name])
        assert len(loads) >= 4, (name, loads)


def test_counting_kernels_use_no_local_memory(kernels):
    for name in _counting_kernels(kernels):
        assert not re.search(r"\b(ld|st)\.local\b", kernels[name]), name
