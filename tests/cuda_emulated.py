"""The CUDA kernels as a backend for CPU tensors, for the tests: ``csrc/cuda`` compiled as host code through
``tests/native/cuda_emulation.h`` into an extension module of its own (the real ``nepenthe._cuda`` is untouched).

``tests/conftest.py`` adds a ``("cpu", "cuda")`` pair to the tests that take ``device_backend``: during such a
test, the dispatcher's ``cuda`` backend is this emulation and counts CPU tensors, so the kernel tests run the
CUDA kernels (and their launch plans) on every layout they cover, without a GPU. Built once per session with nvcc
(about 15 s); the pair is left out where nvcc is missing.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch
from cuda_toolkit import HOST_WARNINGS, ROOT, find_nvcc

from nepenthe.kernels import cpu_backend, cuda_backend

PAIR = ("cpu", "cuda")
PAIR_ID = "cpu-cuda_emulated"


def build_extension(out: Path) -> ModuleType:
    """``bind_cuda.cpp`` and the emulated kernels linked into ``out/_cuda*.so``, loaded as
    ``nepenthe_emulated._cuda``. Raises CalledProcessError with nvcc's output when the build fails."""
    import pybind11

    nvcc = find_nvcc()
    assert nvcc is not None, "the emulated CUDA backend needs nvcc"
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = out / f"_cuda{suffix}"
    native = ROOT / "tests" / "native"
    command = [
        nvcc, "-std=c++17", "-O2", "-shared", "-Xcompiler", "-fPIC", *HOST_WARNINGS, "-DNEPENTHE_CUDA_EMULATION",
        "-DNEPENTHE_EMULATED_ARCH=900", f"-I{ROOT / 'csrc' / 'cuda'}", f"-I{ROOT / 'csrc' / 'common'}",
        f"-I{native}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
        str(ROOT / "csrc" / "cuda" / "bind_cuda.cpp"), str(native / "count_cuda_emulated.cu"), "-o", str(target),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    loader = importlib.machinery.ExtensionFileLoader("nepenthe_emulated._cuda", str(target))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules.setdefault(loader.name, module)
    return module


def backend(ext: ModuleType) -> SimpleNamespace:
    """A dispatcher backend that runs ``ext``'s kernels on CPU tensors, called as the cuda backend calls them."""

    def device_problem(device: torch.device) -> str | None:
        return None if device.type == "cpu" else f"the emulated CUDA kernels count CPU tensors only, got {device}"

    def count(job) -> None:
        ext.count(*cpu_backend.job_args(job), 0)

    def fused_forward(job) -> None:
        args = cpu_backend.activation_args(job.kind, job.params)
        ext.fused(*cpu_backend.job_args(job), 0, job.y.data_ptr(), job.y_view.args, *args)

    return SimpleNamespace(NAME="cuda", load=lambda: None, device_problem=device_problem, count=count,
                           fused_forward=fused_forward, fused_in_place=cuda_backend.fused_in_place)  # fmt: skip


def available() -> bool:
    return find_nvcc() is not None
