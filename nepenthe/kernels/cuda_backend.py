"""The ``cuda`` backend: the CUDA extension ``nepenthe._cuda`` (csrc/cuda), for CUDA tensors.

Kernels run on the current torch stream of the tensor's device and never synchronise with the host.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .cpu_backend import activation_args, job_args
from .cuda_device import on_device
from .fused_plan import FusedPlan
from .jobs import CountJob, FusedJob

NAME = "cuda"

_ext: ModuleType | None = None


def load() -> None:
    """Import ``nepenthe._cuda`` and check that a CUDA GPU is present; raise with the reason otherwise."""
    global _ext
    try:
        ext = importlib.import_module("nepenthe._cuda")
    except ImportError as err:
        raise ImportError(
            f"nepenthe._cuda not built or not loadable ({err}): build it where nvcc is found with "
            "`NEPENTHE_BUILD_CUDA=1 pip install --no-build-isolation --no-deps -e .`"
        ) from err
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU: torch.cuda.is_available() is False")
    if ext.device_count() < 1:
        raise RuntimeError(
            f"nepenthe._cuda (CUDA runtime {ext.runtime_version()}) sees no usable GPU: the driver may be older "
            "than the CUDA toolkit it was built with"
        )
    _ext = ext


def device_problem(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the cuda backend counts CUDA tensors only, got a tensor on {device}"
    return None


def count(job: CountJob) -> None:
    assert _ext is not None, "cuda backend used before load()"
    with on_device(job.x.device):
        _ext.count(*job_args(job), torch.cuda.current_stream().cuda_stream)


def fused_forward(job: FusedJob) -> None:
    assert _ext is not None, "cuda backend used before load()"
    with on_device(job.x.device):
        stream = torch.cuda.current_stream().cuda_stream
        _ext.fused(*job_args(job), stream, job.y.data_ptr(), job.y_view.args, *activation_args(job.kind, job.params))


def fused_in_place(plan: FusedPlan) -> bool:
    """Whether ``fused_activation_`` should hand the extension y = x: on every dense layout (``plan.view``). Every
    CUDA kernel reads each value once, and the thread that read it then writes its activation, so no value is read
    after it was overwritten: one pass reads and writes x once, where a count and torch's in-place activation read
    it twice."""
    return plan.view is not None
