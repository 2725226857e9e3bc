"""Build one target of CMakeLists.txt for another ``-march`` into temporary folders and load it under its own name,
beside the installed extension (tests of builds for other CPUs than this one).

Builds run in background threads (:func:`start_cpu_variant`): conftest.py starts the portable builds that the
selected tests need as soon as the suite is collected, so that they compile on the core the tests leave idle, and
stops what still runs when the session ends. Built in turn when their tests came,
the three took 4.5 of the suite's 11 minutes on a 2-core Xeon (about 400 s of CPU time: the CPU kernels are one
translation unit).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.machinery
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]

_BUILDS: dict[tuple[str, str], Future[Path]] = {}
_POOL = ThreadPoolExecutor(max_workers=3, thread_name_prefix="cpu-variant")
_RUNNING: set[subprocess.Popen] = set()  # the builds' cmake processes
_STOPPED = threading.Event()


def start_cpu_variant(target: str, arch: str) -> Future[Path]:
    """Start building ``target`` for ``-march=arch`` in a temporary folder (once per session, removed at exit); the
    future gives the built file."""
    key = (target, arch)
    if key not in _BUILDS:
        folder = Path(tempfile.mkdtemp(prefix=f"nepenthe{target}-{arch}-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _BUILDS[key] = _POOL.submit(_compile, target, arch, folder / "build", folder / "out")
    return _BUILDS[key]


def build_cpu_variant(target: str, arch: str) -> ModuleType:
    """``target`` (``_cpu`` or ``_cpu_isa``) compiled with ``-march=arch`` in temporary folders and loaded as
    ``nepenthe_<arch>.<target>``. Needs cmake, ninja and a compiler (the callers skip without cmake). Compiler
    warnings are errors here (``NEPENTHE_WERROR``): a failed build raises with the compiler's output."""
    path = start_cpu_variant(target, arch).result()
    loader = importlib.machinery.ExtensionFileLoader(f"nepenthe_{arch.replace('-', '_')}.{target}", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _compile(target: str, arch: str, build: Path, out: Path) -> Path:
    import pybind11

    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DNEPENTHE_OUTPUT_DIR={out}", "-DNEPENTHE_BUILD_CUDA=OFF", f"-DNEPENTHE_CPU_ARCH={arch}",
        "-DNEPENTHE_WERROR=ON",
    ]  # fmt: skip
    for command in (configure, ["cmake", "--build", str(build), "--target", target]):
        if _STOPPED.is_set():
            raise RuntimeError("the test session ended before this build")
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        ) as run:  # its own process group: stop_builds stops cmake and ninja together
            _RUNNING.add(run)
            try:
                stdout, stderr = run.communicate()
            finally:
                _RUNNING.discard(run)
        output = stdout[-6000:] + stderr[-2000:]
        assert run.returncode == 0, f"{' '.join(command[:3])} failed for -march={arch}:\n{output}"
    (path,) = out.glob(f"{target}.*so")
    return path


def stop_builds() -> None:
    """Kill the builds still running (conftest.py, when the session ends: a run stopped early need not wait)."""
    _STOPPED.set()
    for run in list(_RUNNING):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGTERM)  # ninja stops the compilers it runs (in groups of their own)
    for run in list(_RUNNING):
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.wait(timeout=10)
