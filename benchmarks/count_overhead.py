"""What ``count_states`` adds to its CPU kernel: the Python around one call, timed as a benchmark sees it.

A count of a small map (MobileNet-V2's last, 8 MB) streams the tensor through the caches, so the Python that runs
next finds its own code and data evicted to L3 and takes two to three times as long as in a tight loop. This script
times, interleaved in one process (best of the rounds):

- ``x.sum()``, the bar, and the cpu extension's call alone, with its arguments built beforehand;
- ``count_states(x, thresholds)`` (new counts) and with ``counts=`` given (a profiler's call);
- each piece of Python right after a count ("cold") and again at once ("hot").

Usage::

    python benchmarks/count_overhead.py                       # MobileNet-V2's last map and ResNet-18 layer4
    python benchmarks/count_overhead.py --shape 32 1280 7 7 --thresholds 0 6 --channels-last
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

import nepenthe
from nepenthe.kernels import cpu_backend, dispatch
from nepenthe.kernels.count import counter_for
from nepenthe.kernels.jobs import CountJob
from nepenthe.kernels.plan import count_plan

CASES = (((32, 1280, 7, 7), (0.0, 6.0)), ((32, 512, 7, 7), (0.0,)))


def best_interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Microseconds of each function, best of ``rounds``, the functions run in turn within each round."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: t * 1e6 for name, t in best.items()}


def cold_and_hot(
    pieces: dict[str, Callable[[], object]], streak: Callable[[], object], rounds: int
) -> dict[str, tuple[float, float]]:
    """Microseconds of each piece right after ``streak`` (a count: caches full of the tensor) and just after
    itself, best of ``rounds``."""
    cold = dict.fromkeys(pieces, float("inf"))
    hot = dict.fromkeys(pieces, float("inf"))
    for _ in range(rounds):
        for name, piece in pieces.items():
            streak()
            start = time.perf_counter()
            piece()
            cold[name] = min(cold[name], time.perf_counter() - start)
            start = time.perf_counter()
            piece()
            hot[name] = min(hot[name], time.perf_counter() - start)
    return {name: (cold[name] * 1e6, hot[name] * 1e6) for name in pieces}


def measure(shape: tuple[int, ...], thresholds: tuple[float, ...], channels_last: bool, rounds: int) -> list[str]:
    x = torch.randn(*shape) * 3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    nepenthe.count_states(x, thresholds, backend="cpu")  # loads the backend and plans x
    plan = count_plan(x, thresholds, 1)
    counts = torch.zeros(plan.channels, plan.states, dtype=torch.int64)
    job = CountJob(x, 1, plan.view, plan.values, plan.kernel_thresholds, False, counts)
    args = cpu_backend.job_args(job, torch.get_num_threads())
    ext = cpu_backend._ext
    assert ext is not None
    chosen = dispatch.select_backend(x.device, "cpu")
    whole = best_interleaved(
        {
            "x.sum()": lambda: x.sum(),
            "extension call alone": lambda: ext.count(*args),
            "count_states, new counts": lambda: nepenthe.count_states(x, thresholds, backend="cpu"),
            "count_states, counts given": lambda: nepenthe.count_states(x, thresholds, counts=counts, backend="cpu"),
        },
        rounds,
    )
    layout = "channels_last" if channels_last else "nchw"
    out = [f"{tuple(shape)} {layout}, thresholds {thresholds}", "", "| call | us | / x.sum() |", "|---|---:|---:|"]
    out += [f"| {name} | {t:.1f} | {t / whole['x.sum()']:.3f} |" for name, t in whole.items()]
    dev = x.device
    pieces = cold_and_hot(
        {
            "plan lookup": lambda: count_plan(x, thresholds, 1),
            "x.device + select_backend": lambda: dispatch.select_backend(x.device, "cpu"),
            "counter lookup": lambda: counter_for(plan, chosen, False),
            "torch.zeros counts": lambda: torch.zeros(plan.channels, plan.states, dtype=torch.int64, device=dev),
            "torch.empty counts": lambda: torch.empty(plan.channels, plan.states, dtype=torch.int64),
            "CountJob": lambda: CountJob(x, 1, plan.view, plan.values, plan.kernel_thresholds, False, counts),
            "job_args": lambda: cpu_backend.job_args(job, 2),
            "torch.get_num_threads": torch.get_num_threads,
        },
        lambda: ext.count(*args),
        max(rounds // 3, 1),
    )
    out += ["", "| piece | cold us (after a count) | hot us |", "|---|---:|---:|"]
    out += [f"| {name} | {c:.2f} | {h:.2f} |" for name, (c, h) in pieces.items()]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", help="one tensor shape (default: two 7x7 maps)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rounds", type=int, default=1500)
    args = parser.parse_args(argv)
    if "cpu" not in nepenthe.available_backends("cpu"):
        raise SystemExit("the cpu backend did not load: `python -m nepenthe doctor` says why")
    cases = [(tuple(args.shape), tuple(args.thresholds))] if args.shape else list(CASES)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for shape, thresholds in cases:
        print()
        print("\n".join(measure(shape, thresholds, args.channels_last, args.rounds)))


if __name__ == "__main__":
    main()
