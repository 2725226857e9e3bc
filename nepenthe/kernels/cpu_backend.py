"""The ``cpu`` backend: the C++/OpenMP extension ``nepenthe._cpu`` (csrc/cpu), for CPU tensors."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .jobs import CountJob, FusedJob

NAME = "cpu"
EXTENSION = "nepenthe._cpu"

# Must match the DType and Activation enums of csrc/common/count_args.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
ACTIVATION_CODES = {"relu": 0, "hardtanh": 1, "leaky_relu": 2, ("gelu", "none"): 3, ("gelu", "tanh"): 4}

_ext: ModuleType | None = None


def load() -> None:
    """Import ``nepenthe._cpu``; raise ImportError saying how to build it when it is missing or broken."""
    global _ext
    try:
        _ext = importlib.import_module(EXTENSION)
    except ImportError as err:
        raise ImportError(
            f"{EXTENSION} not built or not loadable ({err}): run `pip install --no-build-isolation --no-deps -e .`"
        ) from err


def device_problem(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"the cpu backend counts CPU tensors only, got a tensor on {device}"
    return None


def activation_args(kind: str, params: dict[str, object]) -> tuple[int, float, float]:
    """(activation code, p0, p1) of a fused kind for the extensions."""
    if kind == "gelu":
        return ACTIVATION_CODES[("gelu", str(params.get("approximate", "none")))], 0.0, 0.0
    if kind == "hardtanh":
        return ACTIVATION_CODES[kind], float(params["min_val"]), float(params["max_val"])
    if kind == "leaky_relu":
        return ACTIVATION_CODES[kind], float(params["negative_slope"]), 0.0
    return ACTIVATION_CODES[kind], 0.0, 0.0


def job_args(job: CountJob) -> list[object]:
    """The arguments both extensions take first: input, dtype, view, thresholds, ties flag, counts."""
    kt = job.kernel_thresholds
    return [
        job.x.data_ptr(),
        DTYPE_CODES[job.x.dtype],
        job.view.args,
        kt.greater,
        kt.tie,
        job.ignore_ties,
        job.counts.data_ptr(),
    ]


def _common(job: CountJob) -> list[object]:
    return [*job_args(job), torch.get_num_threads()]


def count(job: CountJob) -> None:
    assert _ext is not None, "cpu backend used before load()"
    _ext.count(*_common(job))


def fused_forward(job: FusedJob) -> None:
    assert _ext is not None, "cpu backend used before load()"
    _ext.fused(*_common(job), job.y.data_ptr(), job.y_view.args, *activation_args(job.kind, job.params))
