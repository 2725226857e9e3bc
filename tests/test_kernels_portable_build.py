"""The CPU extension built for other x86 CPUs than this one counts exactly too.

The default build uses ``-march=native``, so on this AVX-512 machine (with VBMI and VPOPCNTDQ) the suite never runs
the code paths that most other x86 CPUs take. Three variants are built with CMake into temporary folders, loaded
beside the installed one, and checked against the torch reference. They build in background threads from the
moment the suite is collected (conftest.py, tests/cpu_variants.py): in turn, on a 2-core Xeon, they took 48, 83 and
138 s (x86-64, -v3, -v4), 4.5 minutes of the suite.

- ``x86-64`` (SSE2 only, the compiler's baseline): 128-bit generic vectors, as on Arm (tests/test_kernels_cpu_arm.py);
- ``x86-64-v3`` (AVX2, FMA, F16C): 256-bit vectors, word lanes and word bitmaps for 16-bit values, 32-channel byte
  lanes for float compute in the caches;
- ``x86-64-v4`` (AVX-512 F/BW/CD/DQ/VL, as on Skylake-X): byte lanes and sign counting, but rows counted one by one
  and byte-lane counters put back in channel order without VBMI's byte permutation.
"""

from __future__ import annotations

import functools
import math
import shutil
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from activation_oracles import assert_bit_equal
from cpu_variants import build_cpu_variant, start_cpu_variant
from test_kernels_count import activation_values, random_values

from nepenthe.kernels.cpu_backend import activation_args, job_args
from nepenthe.kernels.jobs import CountJob
from nepenthe.kernels.layout import readable_view
from nepenthe.kernels.reference import count_states_reference
from nepenthe.kernels.thresholds import kernel_thresholds

# -march value -> the /proc/cpuinfo flag this machine needs to run that build
ARCHS = {"x86-64": "sse2", "x86-64-v3": "avx2", "x86-64-v4": "avx512bw"}


def _has_flag(flag: str) -> bool:
    try:
        return f" {flag} " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


def _runs_here(arch: str) -> bool:
    return sys.platform == "linux" and _has_flag(ARCHS[arch]) and shutil.which("cmake") is not None


def start_portable_builds(archs: set[str]) -> None:
    """Start the builds for ``archs`` that this machine can run, in the background (conftest.py calls this once the
    suite is collected, with the archs of the selected tests)."""
    for arch in filter(_runs_here, sorted(archs)):
        start_cpu_variant("_cpu", arch)


@pytest.fixture(scope="module", params=list(ARCHS))
def portable_ext(request) -> ModuleType:
    arch = request.param
    if not _runs_here(arch):
        pytest.skip(f"needs Linux on an x86 CPU with {ARCHS[arch]}, and cmake")
    return build_cpu_variant("_cpu", arch)


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
@pytest.mark.parametrize("values", ["specials", "activations"])
def test_portable_build_counts_equal_reference(portable_ext, shape, channels_last, dtype, values):
    seed = zlib.crc32(repr((shape, channels_last, dtype, values)).encode())
    make = random_values if values == "specials" else activation_values
    x = make(shape, dtype, seed)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # the 16-bit word paths (one or two thresholds, no ties) compare raw bits, or keys when a threshold is < 0
    cases = [((0.0,), False), ((0.0, 6.0), False), ((-1.0, 0.5), False), ((0.0, 6.0), True)]
    for thresholds, ignore_ties in cases + [((-2.5, -1.0, 0.0, 0.5, 3.0), False)]:
        job = _job(x, thresholds, ignore_ties)
        portable_ext.count(*job_args(job), 2)
        assert torch.equal(job.counts, count_states_reference(x, thresholds, 1, ignore_ties))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("nan", [False, True], ids=["no_nan", "one_nan"])
def test_portable_build_counts_channels_last_activations(portable_ext, dtype, nan):
    """channels_last maps in the caches, NaN-free as activations are, or with one NaN. AVX2 builds count float
    compute there in byte lanes, 32 channels at a time over blocks of 255 positions, behind a NaN guard: 468
    positions make two blocks, and one NaN sends only its own block down the exact path; 300 channels leave 12 (a
    vector and a masked tail) to register tiles."""
    x = activation_values((4, 300, 9, 13), dtype, zlib.crc32(repr(("cl activations", dtype)).encode()))
    if nan:
        x.view(-1)[x.numel() // 3] = math.nan
    x = x.contiguous(memory_format=torch.channels_last)
    for thresholds, ignore_ties in [((0.0,), False), ((0.0, 6.0), False), ((-1.0, 0.0), False), ((0.0, 6.0), True)]:
        job = _job(x, thresholds, ignore_ties)
        portable_ext.count(*job_args(job), 2)
        assert torch.equal(job.counts, count_states_reference(x, thresholds, 1, ignore_ties)), thresholds


FROM_MEMORY_THRESHOLDS = [((0.0,), False), ((0.0, 6.0), False), ((-3.0, 3.0), True)]


@functools.cache
def _from_memory_case(layout: str, values: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A 37 MB float32 input and its reference counts, made once for the three builds."""
    make = random_values if values == "specials" else activation_values
    x = make((2, 96, 220, 220), torch.float32, zlib.crc32(repr(("from memory", layout, values)).encode()))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced_rows":
        x = x[:, :, :, :200]  # rows of 200 values, not back to back
    return x, [count_states_reference(x, t, 1, ties) for t, ties in FROM_MEMORY_THRESHOLDS]


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced_rows"])
@pytest.mark.parametrize("values", ["specials", "activations"])
def test_portable_build_counts_tensors_read_from_memory(portable_ext, layout, values):
    """Tensors of 24 MiB and more take the prefetching variants of the loops (kMemoryBytes), and AVX2 builds other
    paths there: channels_last with three tiles or more counts across each position's channels into lane counters
    in L1 (row sweep), NCHW rows against 0.0 from the values' signs behind a NaN guard. NaN-free activations take
    the guarded fast paths; values full of NaN, infinities and ties their exact fallbacks."""
    x, expected = _from_memory_case(layout, values)
    assert x.numel() * 4 >= 24 << 20
    for (thresholds, ignore_ties), counts in zip(FROM_MEMORY_THRESHOLDS, expected, strict=True):
        job = _job(x, thresholds, ignore_ties)
        portable_ext.count(*job_args(job), 2)
        assert torch.equal(job.counts, counts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_portable_build_fused_relu_equals_torch(portable_ext, dtype):
    x = random_values((4, 19, 5, 7), dtype, seed=7)
    job = _job(x, (0.0,), False)
    y = torch.empty_like(x)
    portable_ext.fused(*job_args(job), 1, y.data_ptr(), job.view.args, 0, 0.0, 0.0)
    assert_bit_equal(y, F.relu(x))
    assert torch.equal(job.counts, count_states_reference(x, (0.0,), 1, False))


@pytest.mark.parametrize("channels", [64, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind,params", [("relu", {}), ("hardtanh", {"min_val": 0.0, "max_val": 6.0})], ids=str)
def test_portable_build_fused_in_place_on_channels_last(portable_ext, kind, params, dtype, channels):
    """y = x on channels_last maps of several chunks, three of them holding NaN, which are read again to be counted
    exactly: each build's lanes (byte, word or tiles) write only what they have counted. 100 channels leave some
    over for the tiles (AVX2's byte lanes take 96, AVX-512's 64), which write each block once it is counted."""
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(4, channels, 40, 40, generator=gen, dtype=torch.float64) * 4).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    for at in (7, 70_001, 300_000):
        x.permute(0, 2, 3, 1).view(-1)[at] = math.nan  # in storage order: position-major
    original = x.clone()
    thresholds = (0.0,) if kind == "relu" else (0.0, 6.0)
    job = _job(x, thresholds, False)
    assert job.x.data_ptr() == x.data_ptr()  # counted where it lies: y = x is the tensor itself
    portable_ext.fused(*job_args(job), 2, x.data_ptr(), job.view.args, *activation_args(kind, params))
    want = F.relu(original) if kind == "relu" else F.hardtanh(original, 0.0, 6.0)
    assert_bit_equal(x, want)
    assert torch.equal(job.counts, count_states_reference(original, thresholds, 1, False))
