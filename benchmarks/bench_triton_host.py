"""Host time of one count on a GPU: where a Triton launch's microseconds go.

On tensors small enough that the host, not the GPU, sets the pace, times back-to-back calls (wall clock,
synchronised once at the end; the median of several runs) of ``x.sum()``; ``count_states`` allocating its counts
(cuda and triton backends); then adding into given counts on the ``cuda`` backend and on the ``triton`` backend,
launched through Triton's ``JITFunction.run`` and directly through the compiled kernel's launcher
(``triton_count.DIRECT_LAUNCH``), all in one process. Then profiles the Triton calls (cProfile, both ways) to show
which functions take the host's time. Needs a CUDA GPU.

    python benchmarks/bench_triton_host.py [--calls 2000] [--out results/triton_host.md]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable

import torch

from nepenthe import count_states
from nepenthe.kernels import available_backends, fused_activation, triton_count

TENSORS = [
    ("ResNet-18 layer4", (128, 512, 7, 7), torch.float16, torch.contiguous_format),
    ("ResNet-18 layer4", (128, 512, 7, 7), torch.float16, torch.channels_last),
    ("MobileNet-V2 last", (128, 1280, 7, 7), torch.float32, torch.contiguous_format),
]


def per_call_us(fn: Callable[[], object], calls: int, runs: int = 5) -> float:
    """Median over ``runs`` of the wall time per call of ``calls`` back-to-back calls."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def with_direct_launch(direct: bool, fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        triton_count.DIRECT_LAUNCH = direct
        return fn()

    return call


def profile(fn: Callable[[], object], calls: int, top: int = 14) -> str:
    fn()
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", default=None, help="also write the report to this markdown file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_triton_host.py needs a CUDA GPU")
    backends = available_backends(torch.device("cuda"))
    lines = [
        f"{torch.cuda.get_device_name()}; microseconds per call, back-to-back calls, median of 5 runs of {args.calls}",
        "",
        "| tensor | shape | dtype | layout | x.sum() | cuda, new counts | triton, new counts | cuda | "
        "triton through JITFunction.run | triton direct | fused relu, triton through run | fused relu, triton direct |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    profiles = []
    for name, shape, dtype, memory_format in TENSORS:
        x = torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=memory_format)
        counts = torch.zeros(shape[1], 2, dtype=torch.int64, device="cuda")

        def count_with(backend: str, x: torch.Tensor = x, counts: torch.Tensor = counts) -> Callable[[], object]:
            return lambda: count_states(x, counts=counts, backend=backend)

        def fused(x: torch.Tensor = x, counts: torch.Tensor = counts) -> object:
            return fused_activation(x, "relu", counts, backend="triton")

        row = [per_call_us(lambda x=x: x.sum(), args.calls)]
        for backend in ("cuda", "triton"):  # counts allocated (and zeroed) by count_states
            fresh = (lambda b=backend, x=x: count_states(x, backend=b)) if backend in backends else None
            row.append(per_call_us(fresh, args.calls) if fresh else float("nan"))
        row.append(per_call_us(count_with("cuda"), args.calls) if "cuda" in backends else float("nan"))
        for fn in (count_with("triton"), fused):
            for direct in (False, True):
                row.append(per_call_us(with_direct_launch(direct, fn), args.calls))
        layout = "channels_last" if memory_format == torch.channels_last else "nchw"
        cells = " | ".join(f"{t:.1f}" for t in row)
        lines.append(f"| {name} | {tuple(shape)} | {str(dtype)[6:]} | {layout} | {cells} |")
        if not profiles:
            for direct in (False, True):
                title = "direct" if direct else "through JITFunction.run"
                text = profile(with_direct_launch(direct, count_with("triton")), args.calls)
                heading = f"### cProfile, {args.calls} Triton counts of {name} {layout}, {title}"
                profiles.append(f"{heading}\n\n```\n{text}```")
    triton_count.DIRECT_LAUNCH = True
    report = "\n".join(lines) + "\n\n" + "\n\n".join(profiles) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
