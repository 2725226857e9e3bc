"""Build nepenthe's compiled kernels with CMake + ninja + pybind11.

``nepenthe._cpu`` (C++/OpenMP, with ``nepenthe._cpu_isa``, which checks this CPU against it) is always built;
``nepenthe._cuda`` is built when ``nvcc`` is found. Environment:

- ``NEPENTHE_BUILD_CPU=0|1``: skip the CPU extension (a GPU machine's quick check needs only the CUDA one; the
  ``cpu`` backend then reports itself not built and CPU tensors count with the torch reference), or force it.
  On Linux (x86-64 and Arm, where it is tested) a failed CPU build is an error; elsewhere (macOS without OpenMP,
  Windows) it only warns unless forced;
- ``NEPENTHE_BUILD_CUDA=0|1``: skip, or force (a failure is then an error) the CUDA extension;
- ``NEPENTHE_CUDA_ARCHS``: CUDA architectures, default ``"80;90"``;
- ``NEPENTHE_CPU_ARCH``: ``-march`` for the CPU kernels, default ``native`` (empty for the compiler default).

Without forcing, a CUDA build failure only warns: ``import nepenthe`` falls back to the other backends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension module produced by a target of the top-level CMakeLists.txt."""

    def __init__(self, name: str, target: str, optional: bool = False) -> None:
        super().__init__(name, sources=[])
        self.target = target
        self.optional = optional


def _nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_mode() -> tuple[bool, bool, str | None]:
    """(build it, forced, nvcc path)."""
    flag = os.environ.get("NEPENTHE_BUILD_CUDA", "").strip()
    nvcc = _nvcc()
    if flag == "0":
        return False, False, nvcc
    if flag == "1":
        return True, True, nvcc
    return nvcc is not None, False, nvcc


class CMakeBuild(build_ext):
    """Configures CMake once per build directory and builds each extension's target into place."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        try:
            self._build_target(ext)
        except (subprocess.CalledProcessError, OSError) as err:
            if not ext.optional:
                raise
            print(f"warning: optional extension {ext.name} was not built ({err}); nepenthe will fall back")

    def _build_target(self, ext: CMakeExtension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        build_cuda, _, nvcc = _cuda_mode()
        args = [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            "-G",
            "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DNEPENTHE_OUTPUT_DIR={out_dir}",
            f"-DNEPENTHE_BUILD_CUDA={'ON' if build_cuda and ext.target == '_cuda' else 'OFF'}",
            f"-DNEPENTHE_CUDA_ARCHS={os.environ.get('NEPENTHE_CUDA_ARCHS', '80;90')}",
            f"-DNEPENTHE_CPU_ARCH={os.environ.get('NEPENTHE_CPU_ARCH', 'native')}",
        ]
        if nvcc and ext.target == "_cuda":
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        subprocess.run(args, check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", ext.target, "-j", jobs], check=True)


def _extensions() -> list[CMakeExtension]:
    cpu_flag = os.environ.get("NEPENTHE_BUILD_CPU", "").strip()
    skip_cpu = cpu_flag == "0"
    cpu_optional = cpu_flag != "1" and not sys.platform.startswith("linux")
    # _cpu_isa: the check of this CPU against what _cpu was compiled for (csrc/cpu/isa.h)
    cpu = [
        CMakeExtension("nepenthe._cpu_isa", "_cpu_isa", optional=cpu_optional),
        CMakeExtension("nepenthe._cpu", "_cpu", optional=cpu_optional),
    ]
    exts = [] if skip_cpu else cpu
    build_cuda, forced, nvcc = _cuda_mode()
    if build_cuda:
        if forced and nvcc is None:
            raise RuntimeError("NEPENTHE_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
        exts.append(CMakeExtension("nepenthe._cuda", "_cuda", optional=not forced))
    return exts


setup(ext_modules=_extensions(), cmdclass={"build_ext": CMakeBuild})
