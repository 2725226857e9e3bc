"""The CUDA kernels' 16-bit pair counting counts exactly, checked on the host without a GPU.

The CUDA counting kernels compare float16 (and, from sm_90, bfloat16) values two at a time, in the 32-bit word
holding them, and count both halves in one 32-bit register (``csrc/cuda/compare_ops.cuh``). The GPU tests compare
whole kernels with the torch reference; this test needs only nvcc. It builds
``tests/native/check_pairs_cuda.cu`` as host code (cuda_fp16/cuda_bf16 emulate the pair compares there), which
counts every bit pattern of both formats in both halves against 24 thresholds, alone and in increasing pairs:
thresholds the formats hold, ones between two of their values, beyond their range, and infinities; lanes are
decoded at the largest count the kernels allow. Its oracle widens each value to double by hand.
"""

from __future__ import annotations

import subprocess

import pytest
from cuda_toolkit import HOST_WARNINGS, ROOT, find_nvcc


def test_pair_counts_match_a_per_value_oracle(tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    exe = tmp_path / "check_pairs_cuda"
    source = ROOT / "tests" / "native" / "check_pairs_cuda.cu"
    includes = [f"-I{ROOT / 'csrc' / d}" for d in ("cuda", "common")]
    build = [nvcc, "-std=c++17", "-O2", *HOST_WARNINGS, *includes, str(source), "-o", str(exe)]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-4000:]
    assert "checked 646 cases, 0 mismatched" in run.stdout, run.stdout[-2000:]
