"""The ``triton`` backend: counting and fused activations as Triton kernels.

CUDA tensors run the compiled kernels. CPU tensors run only in the Triton interpreter (``TRITON_INTERPRET=1``),
which is slow and meant for testing the kernels on machines without a GPU.
"""

from __future__ import annotations

import torch

from .jobs import CountJob, FusedJob

NAME = "triton"


def load() -> None:
    """Import Triton; raises ImportError saying so when it is not installed."""
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise ImportError(f"triton is not installed ({err}); install it with `pip install triton`") from err
    from . import triton_count  # noqa: F401


def _interpreter_on() -> bool:
    import triton

    return bool(triton.knobs.runtime.interpret)


def device_problem(device: torch.device) -> str | None:
    """None for CUDA devices, and for CPU devices while the Triton interpreter is on; otherwise why not."""
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if _interpreter_on():
            return None
        return "Triton runs CPU tensors only in its interpreter; set TRITON_INTERPRET=1 to use it (slow)"
    return f"Triton kernels run on CUDA devices (or CPU under TRITON_INTERPRET=1), not {device.type}"


def count(job: CountJob) -> None:
    """Add the state counts of ``job.x`` into ``job.counts`` in one pass over memory."""
    from .triton_count import run_kernel

    run_kernel(job)


def fused_forward(job: FusedJob) -> None:
    """Count the states of ``job.x`` and write the activation into ``job.y``, in one pass over memory."""
    from .triton_count import ACTIVATIONS, run_kernel

    if job.kind == "hardtanh":
        params = (float(job.params["min_val"]), float(job.params["max_val"]))
    elif job.kind == "leaky_relu":
        params = (float(job.params["negative_slope"]), 0.0)
    else:
        params = (0.0, 0.0)
    key = f"gelu_{job.params.get('approximate', 'none')}" if job.kind == "gelu" else job.kind
    run_kernel(job, ACTIVATIONS[key], params)
