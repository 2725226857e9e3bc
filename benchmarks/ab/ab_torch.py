"""Times several builds of the CPU extension (nepenthe._cpu) in one torch process, in turn with torch's own x.sum().

This machine's memory speed swings for minutes at a time: `x.sum()` of a 154 MB tensor takes 1.5 ms in some
spells and 2.8 ms in others, and the standalone C++ harness (ab.sh) has not seen the fast spells. The kernel
table's ratios come from a torch process (bench_kernels.py), so a change meant for them is measured here, on
bench_kernels' shapes: every round times x.sum() and each build in turn (the builds' order alternating), and each
build's counts are checked against the torch reference.

    python benchmarks/ab/ab_torch.py ROUNDS DIR_A DIR_B [DIR_C ...]   # each DIR holds a built _cpu*.so

ab_torch.sh builds the folders from versions (git revisions or source trees). Environment: DTYPES (fp32), CASES
(substrings of "model what layout" to keep, ';'-separated; all by default), BATCH (32), THREADS (2). Prints, per
tensor, each build's best time over the best x.sum() time, and its best time over the first build's.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_kernels import CASES, DTYPES, make_input  # noqa: E402

from nepenthe.kernels.cpu_backend import job_args  # noqa: E402
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


def main() -> None:
    rounds, folders = int(sys.argv[1]), sys.argv[2:]
    if len(folders) < 2:
        sys.exit("usage: ab_torch.py ROUNDS DIR_A DIR_B [DIR_C ...]")
    builds = [load_build(i, f) for i, f in enumerate(folders)]
    names = [Path(f).name for f in folders]
    threads = int(os.environ.get("THREADS", "2"))
    torch.set_num_threads(threads)
    keep = [s for s in os.environ.get("CASES", "").split(";") if s]
    for dtype_name in os.environ.get("DTYPES", "fp32").split(","):
        for case in CASES:
            for layout in case.layouts:
                label = f"{case.model} {case.what} {layout} {dtype_name}"
                if keep and not any(k in label for k in keep):
                    continue
                x = make_input(case, layout, DTYPES[dtype_name], "cpu", int(os.environ.get("BATCH", "32")))
                xv, view = readable_view(x, case.channel_dim)
                counts = torch.zeros(view.channels, len(case.thresholds) + 1, dtype=torch.int64)
                kt = kernel_thresholds(case.thresholds, x.dtype)
                job = CountJob(xv, case.channel_dim, view, case.thresholds, kt, False, counts)
                args = [*job_args(job), threads]
                expected = count_states_reference(x, case.thresholds, case.channel_dim, False)
                sums: list[float] = []
                times: list[list[float]] = [[] for _ in builds]
                for r in range(rounds):
                    start = time.perf_counter()
                    x.sum()
                    sums.append(time.perf_counter() - start)
                    for i in range(len(builds)) if r % 2 == 0 else reversed(range(len(builds))):
                        start = time.perf_counter()
                        builds[i].count(*args)
                        times[i].append(time.perf_counter() - start)
                exact = []
                for build in builds:
                    counts.zero_()
                    build.count(*args)
                    exact.append(torch.equal(counts, expected))
                best_sum = min(sums)
                cells = [
                    f"{n} {min(t) / best_sum:.2f} ({min(t) / min(times[0]):.3f})" + ("" if ok else " WRONG COUNTS")
                    for n, t, ok in zip(names, times, exact, strict=True)
                ]
                print(f"{label}: sum {best_sum * 1e3:.3f} ms | / sum (/ {names[0]}): " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
