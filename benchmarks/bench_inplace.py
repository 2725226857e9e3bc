"""In-place fused activations on CPU: one pass of the cpu extension against a count and torch's in-place op.

``fused_activation_`` (what the profiler's fused mode runs for ``inplace=True`` activations) either hands the
extension y = x, or counts x and calls torch's ``relu_``/``hardtanh_``/``leaky_relu_``; the cpu backend's
``fused_in_place(plan)`` picks. This script times both ways on each map, interleaved in one process (median of the
rounds), whatever the backend would pick, and says which it picks:

    python benchmarks/bench_inplace.py                           # float32, float16, bfloat16; NCHW and channels_last
    python benchmarks/bench_inplace.py --dtypes fp32 --rounds 100

Each call overwrites the map, so after the first call the map holds activations; both ways run on the same map.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import nepenthe
from nepenthe.kernels import cpu_backend
from nepenthe.kernels.fused_plan import fused_plan

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RELU6 = ("hardtanh", {"min_val": 0.0, "max_val": 6.0})
# (model, tensor, shape, channel_dim, kind and params)
CASES = (
    ("ResNet-18", "layer1 ReLU", (32, 64, 56, 56), 1, ("relu", {})),
    ("ResNet-18", "layer4 ReLU", (32, 512, 7, 7), 1, ("relu", {})),
    ("MobileNet-V2", "576x14x14 ReLU6", (32, 576, 14, 14), 1, RELU6),
    ("MobileNet-V2", "192x28x28 ReLU6", (32, 192, 28, 28), 1, RELU6),
)
QUICK_CASES = (("small", "ReLU6", (2, 16, 14, 14), 1, RELU6),)


def medians(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Microseconds of each function, median of ``rounds``, the functions run in turn within each round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e6 for name, t in times.items()}


def measure(case: tuple, dtype: torch.dtype, channels_last: bool, rounds: int) -> str:
    model, tensor, shape, channel_dim, (kind, params) = case
    x = (torch.randn(*shape) * 4).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    plan = fused_plan(x, kind, params, None, channel_dim, False)
    counts = torch.zeros(plan.channels, plan.states, dtype=torch.int64)
    chosen = cpu_backend.fused_in_place
    try:
        # fused_in_place is looked up at each call: each way forces its own answer, and the backend's is asked first
        picks = chosen(plan)

        def way(one_pass: bool) -> Callable[[], object]:
            def run() -> object:
                cpu_backend.fused_in_place = lambda plan: one_pass
                return nepenthe.fused_activation_(x, kind, counts, channel_dim=channel_dim, backend="cpu", **params)

            return run

        t = medians({"count + torch": way(False), "one pass": way(True)}, rounds)
    finally:
        cpu_backend.fused_in_place = chosen
    layout = "channels_last" if channels_last else "nchw"
    ratio = t["one pass"] / t["count + torch"]
    name = {v: k for k, v in DTYPES.items()}[dtype]
    return (
        f"| {model} | {tensor} | {shape} | {layout} | {name} | {t['count + torch']:.1f} | {t['one pass']:.1f} "
        f"| {ratio:.2f} | {'one pass' if picks else 'count + torch'} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="one small map (a check that the script runs)")
    args = parser.parse_args(argv)
    if "cpu" not in nepenthe.available_backends("cpu"):
        raise SystemExit("the cpu backend did not load: `python -m nepenthe doctor` says why")
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print()
    print("| model | tensor | shape | layout | dtype | count + torch (us) | one pass (us) | one pass / count + torch "
          "| fused_activation_ takes |")  # fmt: skip
    print("|---|---|---|---|---|---:|---:|---:|---|")
    for case in QUICK_CASES if args.quick else CASES:
        for name in args.dtypes:
            for channels_last in (False, True):
                print(measure(case, DTYPES[name], channels_last, args.rounds), flush=True)


if __name__ == "__main__":
    main()
