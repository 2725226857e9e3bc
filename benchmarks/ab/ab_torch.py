"""Times several builds of the CPU extension (nepenthe._cpu) in one torch process, in turn with torch's own x.sum().

This machine's memory speed swings for minutes at a time: `x.sum()` of a 154 MB tensor takes 1.5 ms in some
spells and 2.8 ms in others, and the standalone C++ harness (ab.sh) has not seen the fast spells. The kernel
table's ratios come from a torch process (bench_kernels.py), so a change meant for them is measured here, on
bench_kernels' shapes: every round times x.sum() and each build in turn (the builds' order alternating), and each
build's counts are checked against the torch reference.

    python benchmarks/ab/ab_torch.py ROUNDS DIR_A DIR_B [DIR_C ...]   # each DIR holds a built _cpu*.so

ab_torch.sh builds the folders from versions (git revisions or source trees). Environment: DTYPES (fp32; also
fp16, bf16, fp64), CASES (substrings of "model what layout" to keep, ';'-separated; all by default), BATCH (32),
THREADS (2), MORE_SHAPES=1 (bench_kernels' --more-shapes too). Prints, per tensor, each build's best time over the
best x.sum() time, and its best time over the first build's.

IN_PLACE=1 times ``fused_activation_``'s one pass instead (the case's activation written over x as it is counted,
``_cpu.fused`` with y = x), and in place of x.sum() the first build's count and torch's in-place activation (``relu_``,
``hardtanh_``, ``leaky_relu_``; GELU cases are left out), the way ``fused_activation_`` takes otherwise. Each call
overwrites the map, so after the first it holds activations, as in ``bench_inplace.py``. Each build's first call is
checked on a fresh copy: counts against the reference, output against torch's activation.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_kernels import CASES, DTYPES, MORE_CASES, make_input  # noqa: E402

DTYPES = {**DTYPES, "fp64": torch.float64}  # for the A/B only: the kernel table leaves float64 out

from nepenthe.kernels.cpu_backend import activation_args, job_args  # noqa: E402
from nepenthe.kernels.jobs import CountJob  # noqa: E402
from nepenthe.kernels.layout import readable_view  # noqa: E402
from nepenthe.kernels.reference import count_states_reference  # noqa: E402
from nepenthe.kernels.thresholds import kernel_thresholds  # noqa: E402


def load_build(index: int, folder: str) -> ModuleType:
    """The _cpu module built in `folder`, under a package name of its own so that several load side by side."""
    (path,) = Path(folder).glob("_cpu*.so")
    spec = importlib.util.spec_from_file_location(f"build{index}._cpu", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_in_place(kind: str, params: dict) -> Callable[[torch.Tensor], object] | None:
    """torch's in-place form of a case's activation (None for GELU, which has none)."""
    if kind == "relu":
        return torch.relu_
    if kind == "hardtanh":
        return lambda x: F.hardtanh_(x, params["min_val"], params["max_val"])
    if kind == "leaky_relu":
        return lambda x: F.leaky_relu_(x, params["negative_slope"])
    return None


def in_place_checked(build: ModuleType, x: torch.Tensor, case, args: list, extra: tuple, counts: torch.Tensor) -> bool:
    """Whether ``build``'s one pass over a fresh copy of x writes torch's activation and counts as the reference."""
    fresh = x.clone(memory_format=torch.preserve_format)
    assert fresh.stride() == x.stride()
    expected = count_states_reference(fresh, case.thresholds, case.channel_dim, False)
    activated = torch_in_place(case.kind, case.params)
    assert activated is not None
    want = fresh.clone(memory_format=torch.preserve_format)
    activated(want)
    counts.zero_()
    build.fused(fresh.data_ptr(), *args[1:], fresh.data_ptr(), *extra)
    return torch.equal(counts, expected) and torch.equal(fresh, want)


def time_case(
    builds: list[ModuleType],
    names: list[str],
    case,
    layout: str,
    dtype_name: str,
    rounds: int,
    threads: int,
    in_place: bool,
) -> str:
    """One line: each build's time on ``case`` over the baseline's (x.sum(), or in place a count and torch's op)."""
    x = make_input(case, layout, DTYPES[dtype_name], "cpu", int(os.environ.get("BATCH", "32")))
    xv, view = readable_view(x, case.channel_dim)
    counts = torch.zeros(view.channels, len(case.thresholds) + 1, dtype=torch.int64)
    kt = kernel_thresholds(case.thresholds, x.dtype)
    job = CountJob(xv, case.channel_dim, view, case.thresholds, kt, False, counts)
    args = [*job_args(job), threads]
    if in_place:
        extra = (view.args, *activation_args(case.kind, case.params))
        exact = [in_place_checked(build, xv, case, args, extra, counts) for build in builds]
        calls = [functools.partial(build.fused, *args, args[0], *extra) for build in builds]
        activate = torch_in_place(case.kind, case.params)
        assert activate is not None

        def baseline() -> None:
            builds[0].count(*args)
            activate(x)

    else:
        expected = count_states_reference(x, case.thresholds, case.channel_dim, False)
        exact = []
        for build in builds:
            counts.zero_()
            build.count(*args)
            exact.append(torch.equal(counts, expected))
        calls = [functools.partial(build.count, *args) for build in builds]
        baseline = x.sum
    base: list[float] = []
    times: list[list[float]] = [[] for _ in builds]
    for r in range(rounds):
        start = time.perf_counter()
        baseline()
        base.append(time.perf_counter() - start)
        for i in range(len(builds)) if r % 2 == 0 else reversed(range(len(builds))):
            start = time.perf_counter()
            calls[i]()
            times[i].append(time.perf_counter() - start)
    what, pick = ("count + torch", statistics.median) if in_place else ("sum", min)
    best = pick(base)
    cells = [
        f"{n} {pick(t) / best:.2f} ({pick(t) / pick(times[0]):.3f})" + ("" if ok else " WRONG")
        for n, t, ok in zip(names, times, exact, strict=True)
    ]
    return f"{case.model} {case.what} {layout} {dtype_name}: {what} {best * 1e3:.3f} ms | / {what} (/ {names[0]}): " + (
        ", ".join(cells)
    )


def main() -> None:
    rounds, folders = int(sys.argv[1]), sys.argv[2:]
    if len(folders) < 2:
        sys.exit("usage: ab_torch.py ROUNDS DIR_A DIR_B [DIR_C ...]")
    builds = [load_build(i, f) for i, f in enumerate(folders)]
    names = [Path(f).name for f in folders]
    threads = int(os.environ.get("THREADS", "2"))
    torch.set_num_threads(threads)
    keep = [s for s in os.environ.get("CASES", "").split(";") if s]
    in_place = os.environ.get("IN_PLACE") == "1"
    cases = CASES + (MORE_CASES if os.environ.get("MORE_SHAPES") == "1" else [])
    for dtype_name in os.environ.get("DTYPES", "fp32").split(","):
        for case in cases:
            if in_place and torch_in_place(case.kind, case.params) is None:
                continue
            for layout in case.layouts:
                label = f"{case.model} {case.what} {layout} {dtype_name}"
                if keep and not any(k in label for k in keep):
                    continue
                print(time_case(builds, names, case, layout, dtype_name, rounds, threads, in_place), flush=True)


if __name__ == "__main__":
    main()
