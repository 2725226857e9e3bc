"""The ``cpu`` backend: the C++/OpenMP extension ``nepenthe._cpu`` (csrc/cpu), for CPU tensors."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

from .fused_plan import Forward, FusedPlan
from .jobs import CountJob, FusedJob
from .plan import Counter, CountPlan

NAME = "cpu"
EXTENSION = "nepenthe._cpu"
ISA_EXTENSION = "nepenthe._cpu_isa"

# Must match the DType and Activation enums of csrc/common/count_args.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
ACTIVATION_CODES = {"relu": 0, "hardtanh": 1, "leaky_relu": 2, ("gelu", "none"): 3, ("gelu", "tanh"): 4}

_ext: ModuleType | None = None
_isa: ModuleType | None = None


def load() -> None:
    """Import ``nepenthe._cpu``; raise ImportError saying how to build it when it is missing or broken, or when it
    was built for instructions this CPU lacks (a build from another machine, which would die of SIGILL): that is
    asked of ``nepenthe._cpu_isa``, compiled for the baseline CPU, before ``_cpu`` is imported."""
    global _ext, _isa
    try:
        _isa = importlib.import_module(ISA_EXTENSION)
    except ImportError:
        _isa = None  # an older build without the check: import _cpu as it is
    problem = isa_problem(_isa) if _isa is not None else None
    if problem is not None:
        raise ImportError(problem)
    try:
        _ext = importlib.import_module(EXTENSION)
    except ImportError as err:
        raise ImportError(
            f"{EXTENSION} not built or not loadable ({err}): run `pip install --no-build-isolation --no-deps -e .`"
        ) from err


def isa_problem(isa: ModuleType) -> str | None:
    """Why ``nepenthe._cpu`` cannot run on this CPU, from its instruction-set check ``isa`` (``nepenthe._cpu_isa``):
    the extensions it was built for that this CPU lacks. None when it can run."""
    missing = list(isa.missing_isa())
    if not missing:
        return None
    arch = isa.build_arch or "the compiler default"
    return (
        f"{EXTENSION} was built with -march={arch} for instructions this CPU lacks ({', '.join(missing)}), "
        "so its kernels would crash here: rebuild it on this machine (`pip install --no-build-isolation --no-deps "
        "-e .`), or for every machine that shares the build with NEPENTHE_CPU_ARCH=x86-64-v3 (AVX2) or x86-64-v2"
    )


def build_note() -> str:
    """How the loaded extension's kernels were compiled (``nepenthe doctor`` prints it)."""
    if _isa is None:
        return "kernels built for an unknown CPU (nepenthe._cpu_isa is missing: rebuild to check)"
    if not _isa.build_arch:
        return "kernels built for the compiler's default CPU"
    return f"kernels built with -march={_isa.build_arch}"


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


def job_args(job: CountJob, *last: object) -> tuple[object, ...]:
    """The arguments both extensions take first: input, dtype, view, thresholds, ties flag, counts; then ``last``."""
    kt = job.kernel_thresholds
    x = job.x
    return (
        x.data_ptr(), DTYPE_CODES[x.dtype], job.view.args, kt.greater, kt.tie, job.ignore_ties, job.counts.data_ptr(),
        *last,
    )  # fmt: skip


def count(job: CountJob) -> None:
    assert _ext is not None, "cpu backend used before load()"
    _ext.count(*job_args(job, torch.get_num_threads()))


def prepare_count(plan: CountPlan, ignore_ties: bool) -> Counter:
    """A counter for ``plan`` that passes the extension the arguments worked out here once. New counts are
    ``torch.empty``, cleared by the extension: after a count has streamed a tensor through the caches, building
    a job and calling ``torch.zeros`` cost several microseconds, a tenth of a 7x7 map's count."""
    assert _ext is not None, "cpu backend used before load()"
    assert plan.view is not None
    ext_count, get_threads, int64 = _ext.count, torch.get_num_threads, torch.int64
    code, view = DTYPE_CODES[plan.dtype], plan.view.args
    greater, tie = plan.kernel_thresholds.greater, plan.kernel_thresholds.tie
    channels, states = plan.channels, plan.states

    def count(x: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
        if counts is None:
            counts = torch.empty(channels, states, dtype=int64)
            ext_count(x.data_ptr(), code, view, greater, tie, ignore_ties, counts.data_ptr(), get_threads(), True)
        else:
            ext_count(x.data_ptr(), code, view, greater, tie, ignore_ties, counts.data_ptr(), get_threads(), False)
        return counts

    return count


def fused_forward(job: FusedJob) -> None:
    assert _ext is not None, "cpu backend used before load()"
    _ext.fused(
        *job_args(job, torch.get_num_threads()),
        job.y.data_ptr(),
        job.y_view.args,
        *activation_args(job.kind, job.params),
    )


def fused_in_place(plan: FusedPlan) -> bool:
    """Whether ``fused_activation_`` should hand the extension y = x for ``plan`` (x laid out as ``plan.view``)
    rather than count x and let torch activate it in place. The extension takes y = x on every path (it writes
    what it has counted, never as it reads). Against a count and torch's in-place activation, two threads (Zen 4):

    - float16/bfloat16, where torch's in-place activations are slow on CPU: 0.35-0.64 of the time on NCHW and
      channels_last maps from 7x7 to 56x56 (the channel lanes write each chunk once it is counted);
    - float32 rows (NCHW): 56x56 and 112x112 maps from memory 0.62-0.83, 7x7 to 28x28 maps 0.87-1.03, where the
      count is bound by its arithmetic and torch's in-place pass is quick;
    - float32 with the channels innermost, each block written once it is counted (two runs): channels_last maps
      0.71-0.95, tokens 0.65-0.76, (N, C) 0.94-0.99; GELU 0.18-0.25, against a count and torch's GELU copied back;
    - the same in kernels built for AVX2 (``NEPENTHE_CPU_ARCH=x86-64-v3``, torch on AVX2 too): NCHW maps 0.61-0.98,
      channels_last maps 0.74-1.01 (they had taken 1.04-1.31 while AVX2's byte lanes wrote after the item);
    - float64 relu and hardtanh: 0.60-1.03 on NCHW and channels_last maps; float64 GELU, whose activation the
      extension computes a value at a time, 0.61-0.70 on large maps but 3x slower on 7x7 maps: count and torch's;
    - bfloat16 GELU, against a count and torch's GELU copied back: with the channels innermost 0.59-0.68 on
      channels_last maps and 0.41-1.03 on tokens, but on rows (NCHW), where torch's bfloat16 GELU is quicker than
      the extension's gate, 1.10-1.23 on 7x7 and 14x14 maps, 0.92-1.15 on 28x28 and 56x56 (1.64-1.93 in AVX2
      builds): count and torch's there."""
    view = plan.view
    if view is None:
        return False
    if plan.kind != "gelu":
        return True
    rows = view.stride_inner == 1  # NCHW: the spatial dims innermost
    return plan.dtype != torch.float64 and not (plan.dtype == torch.bfloat16 and rows)


def fused_one_pass(plan: FusedPlan) -> bool:
    """Whether ``fused_activation`` should run the extension's fused kernel for ``plan`` rather than count x and
    call torch's activation. Not for GELU where torch's own is quicker by more than the count: the kernel's GELU
    gate is bound by its arithmetic (about 1.8 cycles a value with AVX-512, Zen 4), and torch computes bfloat16
    GELU faster than that. Fused over a count and torch's GELU, two threads, new outputs (medians of 25 calls on
    Swin-T's tokens, 32x384x28x28, 32x768x7x7 and ViT-B's 8x197x3072):

    - AVX-512 build: bfloat16 1.21-1.45, float64 (libm's erf, a value at a time) 1.61-1.73; float32 0.30-1.05,
      float16 0.82-1.10;
    - AVX2 build (``NEPENTHE_CPU_ARCH=x86-64-v3``, torch on AVX2 too): bfloat16 1.40-2.16, float32 1.07-1.38,
      float16 0.67-0.97.

    The piecewise-linear activations take the kernel everywhere (``bench_kernels.py``'s fused table)."""
    if plan.kind != "gelu" or plan.dtype == torch.float16:
        return True
    return plan.dtype == torch.float32 and not _avx2_only()


def _avx2_only() -> bool:
    """Whether the loaded extension was built for AVX2 without AVX-512 (its vectors are 256 bits wide)."""
    return _isa is not None and _avx2_without_avx512(_isa.build_isa)


@functools.cache
def _avx2_without_avx512(build_isa: str) -> bool:  # asked on every float32 GELU call: parsed once
    isa = set(build_isa.split())
    return "avx2" in isa and "avx512f" not in isa


def prepare_fused(plan: FusedPlan) -> Forward:
    """A forward for ``plan`` that passes the extension the arguments worked out here once: y is
    ``torch.empty_like(x)``, read through x's own view (the plan holds only layouts they share)."""
    assert _ext is not None, "cpu backend used before load()"
    assert plan.view is not None
    ext_fused, get_threads, empty_like = _ext.fused, torch.get_num_threads, torch.empty_like
    code, view = DTYPE_CODES[plan.dtype], plan.view.args
    greater, tie, ignore_ties = plan.kernel_thresholds.greater, plan.kernel_thresholds.tie, plan.ignore_ties
    act, p0, p1 = activation_args(plan.kind, plan.params)

    def forward(x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        y = empty_like(x)
        ext_fused(
            x.data_ptr(), code, view, greater, tie, ignore_ties, counts.data_ptr(), get_threads(), y.data_ptr(), view,
            act, p0, p1,
        )  # fmt: skip
        return y

    return forward
