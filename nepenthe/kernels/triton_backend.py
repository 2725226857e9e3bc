"""The ``triton`` backend: counting and fused activations as Triton kernels.

CUDA tensors run the compiled kernels. CPU tensors run only in the Triton interpreter (``TRITON_INTERPRET=1``),
which is slow and meant for testing the kernels on machines without a GPU.
"""

from __future__ import annotations

import functools

import torch

from .fused_plan import FusedPlan
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
    """None for CUDA devices, and for CPU devices while the Triton interpreter is on and can run the kernel;
    otherwise why not."""
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if _interpreter_on():
            return _interpreter_problem()
        return "Triton runs CPU tensors only in its interpreter; set TRITON_INTERPRET=1 to use it (slow)"
    return f"Triton kernels run on CUDA devices (or CPU under TRITON_INTERPRET=1), not {device.type}"


def choice_is_stable(device: torch.device) -> bool:
    """Whether ``device_problem(device)`` always gives the same answer: not on CPU, where it follows
    ``TRITON_INTERPRET``, which can be switched on and off while the process runs."""
    return device.type != "cpu"


@functools.cache
def _interpreter_problem() -> str | None:
    """Why this Triton's interpreter cannot run the kernel, from one count of a tiny tensor (checked once), or None.

    Triton 3.6's interpreter, for one, cannot take a loop bound computed at run time (with numpy 2.4 and later), so
    every count would fail deep inside the interpreter; the backend says so instead."""
    import triton

    from .plan import count_plan
    from .triton_count import run_kernel

    x = torch.tensor([[1.0, -1.0]])
    plan = count_plan(x, (0.0,), 1)
    counts = torch.zeros(plan.channels, plan.states, dtype=torch.int64)
    job = CountJob(x, 1, plan.view, plan.values, plan.kernel_thresholds, False, counts)
    try:
        run_kernel(job)
    except Exception as err:  # noqa: BLE001 - any failure means the interpreter cannot serve this backend
        reason = str(err).splitlines()[0][:160] if str(err) else ""
        return (
            f"Triton {triton.__version__}'s interpreter cannot run nepenthe's kernel ({type(err).__name__}: "
            f"{reason}); use the cpu backend on CPU tensors (Triton 3.8 interprets it)"
        )
    if counts.tolist() != [[0, 1], [1, 0]]:
        return f"Triton {triton.__version__}'s interpreter miscounts a hand-checked tensor ({counts.tolist()})"
    return None


def count(job: CountJob) -> None:
    """Add the state counts of ``job.x`` into ``job.counts`` in one pass over memory."""
    from .triton_count import run_kernel

    run_kernel(job)


def fused_in_place(plan: FusedPlan) -> bool:
    """Whether ``fused_activation_`` should hand the kernel y = x: on dense layouts (``plan.view``) whose channel
    blocks do not share cache lines. A program loads each tile once and stores its activations to the same offsets
    (tiles of one program, and of different programs, never overlap), so no value is read after it was overwritten:
    one pass reads and writes x once, where a count and torch's in-place activation read it twice. H200, batch 128
    (``bench_inplace.py --device cuda``): 0.61-0.94 of the time of a count and torch's op. Where several blocks'
    rows share a line (96 16-bit channels_last channels in blocks of 32), one pass took 1.67-1.72 of it, so those
    take the count and torch's op (``triton_count.channel_rows_share_lines``)."""
    from .triton_count import channel_rows_share_lines

    view = plan.view
    return view is not None and not channel_rows_share_lines(view, plan.dtype.itemsize)


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
