"""The torch-process A/B harness (benchmarks/ab/ab_torch.sh) builds two versions, loads both and checks their counts.

Slow (two builds of the CPU kernels, about a minute): ``pytest -m slow tests/test_bench_ab_torch.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from cuda_toolkit import ROOT


@pytest.mark.slow
def test_ab_torch_times_two_versions_with_exact_counts():
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    old = "HEAD" if (ROOT / ".git").exists() else str(ROOT)
    env = {"ROUNDS": "2", "BATCH": "2", "CASES": "layer4 ReLU nchw", "DTYPES": "fp32,bf16"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "ab" / "ab_torch.sh"), old, str(ROOT)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if "layer4 ReLU nchw" in line]
    assert len(lines) == 2, proc.stdout
    assert all("WRONG" not in line and line.count("/ sum") == 1 for line in lines), proc.stdout
