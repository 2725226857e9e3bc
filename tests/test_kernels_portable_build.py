"""The CPU extension built for a CPU without AVX-512 (``-march=x86-64-v3``: AVX2, FMA, F16C) counts exactly too.

The default build uses ``-march=native``, so on an AVX-512 machine the suite never runs the AVX2 code paths (256-bit
vectors, no bitmap or byte-lane paths) that most other x86 CPUs take. This test builds that variant with CMake into a
temporary folder (about 15 s on 2 cores), loads it beside the installed one, and checks it against the torch
reference.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from test_kernels_count import random_values
from test_kernels_fused import _assert_bit_equal

from nepenthe.kernels.cpu_backend import job_args
from nepenthe.kernels.jobs import CountJob
from nepenthe.kernels.layout import readable_view
from nepenthe.kernels.reference import count_states_reference
from nepenthe.kernels.thresholds import kernel_thresholds

ROOT = Path(__file__).resolve().parents[1]


def _has_avx2() -> bool:
    try:
        return " avx2 " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


@pytest.fixture(scope="module")
def portable_ext(tmp_path_factory) -> ModuleType:
    if sys.platform != "linux" or not _has_avx2() or shutil.which("cmake") is None:
        pytest.skip("needs Linux on an x86 CPU with AVX2, and cmake")
    import pybind11

    build, out = tmp_path_factory.mktemp("build"), tmp_path_factory.mktemp("out")
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DNEPENTHE_OUTPUT_DIR={out}", "-DNEPENTHE_BUILD_CUDA=OFF", "-DNEPENTHE_CPU_ARCH=x86-64-v3",
    ]  # fmt: skip
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "_cpu"], check=True, capture_output=True)
    (path,) = out.glob("_cpu*.so")
    loader = importlib.machinery.ExtensionFileLoader("nepenthe_portable._cpu", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _job(x: torch.Tensor, thresholds: tuple[float, ...], ignore_ties: bool) -> CountJob:
    x, view = readable_view(x, 1)
    counts = torch.zeros(x.shape[1], len(thresholds) + 1, dtype=torch.int64)
    return CountJob(x, 1, view, thresholds, kernel_thresholds(thresholds, x.dtype), ignore_ties, counts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize(
    "shape,channels_last",
    [
        ((3, 300, 7, 7), False),
        ((3, 300, 7, 7), True),
        ((2, 24, 41, 43), False),
        ((2, 70, 9, 9), True),
        ((401, 17), False),
    ],
    ids=str,
)
def test_avx2_build_counts_equal_reference(portable_ext, shape, channels_last, dtype):
    x = random_values(shape, dtype, seed=hash((shape, channels_last, str(dtype))) % 2**31)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for thresholds, ignore_ties in [((0.0,), False), ((0.0, 6.0), True), ((-2.5, -1.0, 0.0, 0.5, 3.0), False)]:
        job = _job(x, thresholds, ignore_ties)
        portable_ext.count(*job_args(job), 2)
        assert torch.equal(job.counts, count_states_reference(x, thresholds, 1, ignore_ties))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_avx2_build_fused_relu_equals_torch(portable_ext, dtype):
    x = random_values((4, 19, 5, 7), dtype, seed=7)
    job = _job(x, (0.0,), False)
    y = torch.empty_like(x)
    portable_ext.fused(*job_args(job), 1, y.data_ptr(), job.view.args, 0, 0.0, 0.0)
    _assert_bit_equal(y, F.relu(x))
    assert torch.equal(job.counts, count_states_reference(x, (0.0,), 1, False))
