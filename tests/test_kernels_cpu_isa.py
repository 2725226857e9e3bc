"""A CPU extension built for instructions this CPU lacks is refused with the reason, never run.

The default build uses ``-march=native``. A build shared with another machine (a home directory mounted on nodes
of several CPU generations, a wheel copied elsewhere) would die of SIGILL on import or inside a kernel.
``nepenthe._cpu_isa``, compiled for the baseline x86-64, records the extensions ``_cpu`` was compiled for and checks
them against this CPU before ``_cpu`` is imported. The oracle for "this CPU has it" is ``/proc/cpuinfo``.
"""

from __future__ import annotations

import importlib
import platform
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from cpu_variants import build_cpu_variant

from nepenthe.kernels import cpu_backend

# __builtin_cpu_supports name (as in build_isa) -> the Linux /proc/cpuinfo flag of the same extension
CPUINFO_FLAG = {
    "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "popcnt": "popcnt", "avx": "avx",
    "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2", "lzcnt": "abm", "movbe": "movbe",
    "avx512f": "avx512f", "avx512vl": "avx512vl", "avx512bw": "avx512bw", "avx512dq": "avx512dq",
    "avx512cd": "avx512cd", "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2", "avx512ifma": "avx512ifma",
    "avx512vpopcntdq": "avx512_vpopcntdq", "avx512bitalg": "avx512_bitalg", "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16", "avxvnni": "avx_vnni", "gfni": "gfni",
    "vaes": "vaes", "vpclmulqdq": "vpclmulqdq",
}  # fmt: skip

# A CPU with every extension GCC 12 knows of on the Intel side (AVX512-FP16 among them): most CPUs lack some.
FOREIGN_ARCH = "sapphirerapids"


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


needs_x86_linux = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64") or not _cpuinfo_flags(),
    reason="needs Linux on x86-64 (/proc/cpuinfo is the oracle)",
)


def _expected_missing(build_isa: str) -> list[str]:
    flags = _cpuinfo_flags()
    return [name for name in build_isa.split() if CPUINFO_FLAG[name] not in flags]


@pytest.fixture(scope="module")
def installed_isa() -> ModuleType:
    try:
        return importlib.import_module(cpu_backend.ISA_EXTENSION)
    except ImportError as err:
        pytest.skip(f"{cpu_backend.ISA_EXTENSION} not built: {err}")


@pytest.fixture(scope="module")
def foreign_isa() -> ModuleType:
    """nepenthe._cpu_isa built with -march=sapphirerapids (CMake, about 10 s), loaded under another name."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    return build_cpu_variant("_cpu_isa", FOREIGN_ARCH)


@needs_x86_linux
def test_installed_build_names_known_extensions_this_cpu_has(installed_isa):
    names = installed_isa.build_isa.split()
    assert "sse3" in names or installed_isa.build_arch in ("", "x86-64")
    assert set(names) <= set(CPUINFO_FLAG), "an extension name the test's cpuinfo table lacks"
    assert installed_isa.missing_isa() == _expected_missing(installed_isa.build_isa) == []
    assert cpu_backend.isa_problem(installed_isa) is None


@needs_x86_linux
def test_foreign_build_reports_what_this_cpu_lacks(foreign_isa):
    assert foreign_isa.build_arch == FOREIGN_ARCH
    names = foreign_isa.build_isa.split()
    assert {"avx2", "avx512f", "avx512bw", "avx512fp16"} <= set(names)
    expected = _expected_missing(foreign_isa.build_isa)
    assert foreign_isa.missing_isa() == expected
    if not expected:
        pytest.skip(f"this CPU has every extension of -march={FOREIGN_ARCH}")
    problem = cpu_backend.isa_problem(foreign_isa)
    assert f"-march={FOREIGN_ARCH}" in problem
    assert all(name in problem for name in expected)
    assert "NEPENTHE_CPU_ARCH=x86-64-v3" in problem


@needs_x86_linux
def test_loader_refuses_foreign_build_before_importing_kernels(foreign_isa, monkeypatch):
    if not foreign_isa.missing_isa():
        pytest.skip(f"this CPU has every extension of -march={FOREIGN_ARCH}")

    def fake_import(name: str) -> ModuleType:
        if name == cpu_backend.ISA_EXTENSION:
            return foreign_isa
        raise AssertionError(f"{name} imported although its instructions are missing")

    monkeypatch.setattr(cpu_backend.importlib, "import_module", fake_import)
    monkeypatch.setattr(cpu_backend, "_ext", None)
    monkeypatch.setattr(cpu_backend, "_isa", None)
    with pytest.raises(ImportError, match="instructions this CPU lacks"):
        cpu_backend.load()
    assert cpu_backend._ext is None


def test_loader_without_check_module_imports_kernels(monkeypatch):
    """An older build has no _cpu_isa: the kernels load as before and doctor says the CPU was not checked."""
    real_import = importlib.import_module

    def fake_import(name: str) -> ModuleType:
        if name == cpu_backend.ISA_EXTENSION:
            raise ImportError("no module")
        return real_import(name)

    monkeypatch.setattr(cpu_backend.importlib, "import_module", fake_import)
    monkeypatch.setattr(cpu_backend, "_ext", None)
    monkeypatch.setattr(cpu_backend, "_isa", None)
    try:
        cpu_backend.load()
    except ImportError as err:
        pytest.skip(f"nepenthe._cpu not built: {err}")
    assert cpu_backend._ext is not None
    assert "unknown CPU" in cpu_backend.build_note()
