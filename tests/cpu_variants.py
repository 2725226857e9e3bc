"""Build one target of CMakeLists.txt for another ``-march`` into temporary folders and load it under its own name,
beside the installed extension (tests of builds for other CPUs than this one)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def build_cpu_variant(target: str, arch: str, build: Path, out: Path) -> ModuleType:
    """``target`` (``_cpu`` or ``_cpu_isa``) compiled with ``-march=arch`` in ``build``, written to ``out`` and
    loaded as ``nepenthe_<arch>.<target>``. Needs cmake, ninja and a compiler (the callers skip without cmake).
    Compiler warnings are errors here (``NEPENTHE_WERROR``): a failed build raises with the compiler's output."""
    import pybind11

    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DNEPENTHE_OUTPUT_DIR={out}", "-DNEPENTHE_BUILD_CUDA=OFF", f"-DNEPENTHE_CPU_ARCH={arch}",
        "-DNEPENTHE_WERROR=ON",
    ]  # fmt: skip
    for command in (configure, ["cmake", "--build", str(build), "--target", target]):
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        output = run.stdout[-6000:] + run.stderr[-2000:]
        assert run.returncode == 0, f"{' '.join(command[:3])} failed for -march={arch}:\n{output}"
    (path,) = out.glob(f"{target}.*so")
    loader = importlib.machinery.ExtensionFileLoader(f"nepenthe_{arch.replace('-', '_')}.{target}", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
