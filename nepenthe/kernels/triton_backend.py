"""The ``triton`` backend: counting and fused activations as Triton kernels.

CUDA tensors run the compiled kernels. CPU tensors run only in the Triton interpreter (``TRITON_INTERPRET=1``),
which is slow and meant for testing the kernels on machines without a GPU.
"""

from __future__ import annotations

import torch

from .jobs import CountJob, FusedJob

NAME = "triton"


# Triton internals the kernel relies on (no public equivalent that also runs in the interpreter): checked at load
# so that a Triton without them leaves this backend out with the reason, instead of failing inside a kernel.
REQUIRED_INTERNALS = ("language.standard._sum_combine", "knobs.runtime.interpret")


def load() -> None:
    """Import Triton; raises ImportError saying why when it is not installed or lacks what the kernel uses."""
    try:
        import triton
    except ImportError as err:
        raise ImportError(f"triton is not installed ({err}); install it with `pip install triton`") from err
    missing = [f"triton.{name}" for name in REQUIRED_INTERNALS if not _has(triton, name)]
    if missing:
        raise ImportError(
            f"triton {triton.__version__} lacks {', '.join(missing)}, which nepenthe's Triton kernel uses "
            "(written for triton 3.x)"
        )
    from . import triton_count  # noqa: F401


def _has(obj: object, dotted: str) -> bool:
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


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
