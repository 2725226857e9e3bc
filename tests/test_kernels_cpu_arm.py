"""The CPU kernels built for 64-bit Arm count exactly: cross-compiled, run under qemu-user.

Arm machines (Graviton, Ampere, Apple silicon under Linux) build ``csrc/cpu/count_cpu.cpp`` with 128-bit NEON
vectors through the same generic vector code as a plain x86-64 build, with ``__fp16`` for float16. The Python
package cannot run under qemu here, so ``tests/native/check_count_cpu.cpp`` checks the kernels against its own
scalar reference in double precision (1296 cases: four dtypes, NCHW rows short and long, channels_last, a strided
gather, four threshold sets, with and without ties, and the fused relu, relu6, hardtanh and leaky_relu outputs bit
for bit) and exits 1 on a mismatch.

Slow (about 50 s: a static cross-build, then qemu): ``python -m pytest -m slow tests/test_kernels_cpu_arm.py``.
Needs ``apt-get install g++-aarch64-linux-gnu qemu-user``; skips without them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_arm_build_counts_exactly_under_qemu(tmp_path):
    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if cxx is None or qemu is None:
        pytest.skip("needs aarch64-linux-gnu-g++ and qemu-aarch64 (apt-get install g++-aarch64-linux-gnu qemu-user)")
    exe = tmp_path / "check_count_cpu"
    build = [
        cxx, "-std=c++17", "-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-static",
        "-Wall", "-Wextra", "-Werror",
        f"-I{ROOT / 'csrc' / 'cpu'}", f"-I{ROOT / 'csrc' / 'common'}",
        str(ROOT / "tests" / "native" / "check_count_cpu.cpp"), str(ROOT / "csrc" / "cpu" / "count_cpu.cpp"),
        "-o", str(exe),
    ]  # fmt: skip
    built = subprocess.run(build, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr[-6000:]
    run = subprocess.run([qemu, str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "checked 1296 cases, 0 mismatched" in run.stdout
