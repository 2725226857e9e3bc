"""The CUDA A/B harness (benchmarks/ab/ab_cuda.sh) builds, so that a GPU session can run it at once.

It compiles two builds of csrc/cuda/count_cuda.cu with their namespaces renamed, and the harness that times and
checks them, here for sm_90 without a GPU (about 40 s on 2 cores, the two versions at once; 80 s of CPU time).
Running it needs a GPU: ``bash benchmarks/ab/ab_cuda.sh A B`` (each a git revision or a folder holding csrc/), or
``AB_OLD=A bash benchmarks/gpu_check.sh``.

Marked slow, since the default suite passed ten minutes on a 2-core Xeon VM: run it before a session with a GPU
(``python -m pytest -m slow tests/test_bench_ab_cuda.py``), as for the CPU harness (tests/test_bench_ab_torch.py).
"""

from __future__ import annotations

import os
import subprocess

import pytest
from cuda_toolkit import ROOT, find_nvcc


@pytest.mark.slow
def test_ab_harness_builds(tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    # A as a git revision where this checkout has its history (the last commit), B as a folder (the working tree)
    old = "HEAD" if (ROOT / ".git").exists() else str(ROOT)
    path = f"{os.path.dirname(nvcc)}{os.pathsep}{os.environ['PATH']}"  # the nvcc found here comes first
    env = dict(os.environ, ARCH="sm_90", BUILD_ONLY="1", PATH=path)
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "ab" / "ab_cuda.sh"), old, str(ROOT)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ab_cuda: built" in proc.stdout
