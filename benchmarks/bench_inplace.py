"""In-place fused activations: one pass of a backend's kernel against a count and torch's in-place op.

``fused_activation_`` (what the profiler's fused mode runs for ``inplace=True`` activations) either hands the
backend's kernel y = x, or counts x and calls torch's ``relu_``/``hardtanh_``; the backend's ``fused_in_place(plan)``
picks. This script times both ways on each map, interleaved in one process (median of the rounds), whatever the
backend would pick, and says which it picks. It also times torch's in-place op alone, the activation without any
count, so the last ratio is what counting costs on top of it:

    python benchmarks/bench_inplace.py                           # cpu: float32, float16, bfloat16; NCHW, channels_last
    python benchmarks/bench_inplace.py --dtypes fp32 --rounds 100
    python benchmarks/bench_inplace.py --dtypes fp64             # float64 (not in the default run)
    python benchmarks/bench_inplace.py --device cuda             # the cuda and triton backends, batch 128, GPU time

On CPU each call is timed alone (wall clock). On CUDA a round runs ``--reps`` calls of each way between two events
(GPU time a call). Each call overwrites the map, so after the first call the map holds activations; every way runs
on the same map.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import nepenthe
from nepenthe.kernels.dispatch import select_backend
from nepenthe.kernels.fused_plan import fused_plan

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
DEFAULT_DTYPES = ["fp32", "fp16", "bf16"]  # float64 on request (--dtypes fp64)
RELU6 = ("hardtanh", {"min_val": 0.0, "max_val": 6.0})
# (model, tensor, shape, channel_dim, kind and params)
CPU_CASES = (
    ("ResNet-18", "layer1 ReLU", (32, 64, 56, 56), 1, ("relu", {})),
    ("ResNet-18", "layer4 ReLU", (32, 512, 7, 7), 1, ("relu", {})),
    ("MobileNet-V2", "576x14x14 ReLU6", (32, 576, 14, 14), 1, RELU6),
    ("MobileNet-V2", "192x28x28 ReLU6", (32, 192, 28, 28), 1, RELU6),
)
# Batch 128: the first two above the H200's 60 MiB L2 in every dtype, the last two in it.
CUDA_CASES = (
    ("ResNet-18", "layer1 ReLU", (128, 64, 56, 56), 1, ("relu", {})),
    ("MobileNet-V2", "block1 ReLU6", (128, 96, 112, 112), 1, RELU6),
    ("ResNet-18", "layer4 ReLU", (128, 512, 7, 7), 1, ("relu", {})),
    ("MobileNet-V2", "last ReLU6", (128, 1280, 7, 7), 1, RELU6),
)
QUICK_CASES = (("small", "ReLU6", (2, 16, 14, 14), 1, RELU6),)


def torch_in_place(kind: str, params: dict[str, float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch's own in-place activation, as the original modules call it."""
    if kind == "relu":
        return torch.relu_
    return lambda x: F.hardtanh_(x, params["min_val"], params["max_val"])


def cpu_medians(fns: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, float]:
    """Microseconds a call of each function, median of ``rounds``, the functions run in turn within each round."""
    del reps  # each call is timed alone
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e6 for name, t in times.items()}


def cuda_medians(fns: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, float]:
    """GPU microseconds a call of each function: each round runs ``reps`` calls of each between two events, the
    functions in turn; median of ``rounds``."""
    for fn in fns.values():
        fn()  # compile and plan outside the timed rounds
    events = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(reps):
                fn()
            end.record()
            events[name].append((begin, end))
    torch.cuda.synchronize()
    return {name: statistics.median(b.elapsed_time(e) * 1e3 / reps for b, e in pairs) for name, pairs in events.items()}


def measure(case: tuple, dtype: torch.dtype, channels_last: bool, device: str, backend: str, args) -> str:
    model, tensor, shape, channel_dim, (kind, params) = case
    x = (torch.randn(*shape, device=device) * 4).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    plan = fused_plan(x, kind, params, None, channel_dim, False)
    counts = torch.zeros(plan.channels, plan.states, dtype=torch.int64, device=device)
    module = select_backend(x.device, backend)
    chosen = module.fused_in_place
    try:
        # fused_in_place is looked up at each call: each way forces its own answer, and the backend's is asked first
        picks = chosen(plan)

        def way(one_pass: bool) -> Callable[[], object]:
            def run() -> object:
                module.fused_in_place = lambda plan: one_pass
                return nepenthe.fused_activation_(x, kind, counts, channel_dim=channel_dim, backend=backend, **params)

            return run

        alone = torch_in_place(kind, params)
        medians = cuda_medians if device == "cuda" else cpu_medians
        t = medians(
            {"count + torch": way(False), "one pass": way(True), "torch alone": lambda: alone(x)},
            args.rounds, args.reps,
        )  # fmt: skip
    finally:
        module.fused_in_place = chosen
    layout = "channels_last" if channels_last else "nchw"
    name = {v: k for k, v in DTYPES.items()}[dtype]
    two, one, alone_us = t["count + torch"], t["one pass"], t["torch alone"]
    gbs = 2 * x.numel() * x.element_size() / (one * 1e-6) / 1e9  # one pass reads and writes x once
    return (
        f"| {backend} | {model} | {tensor} | {shape} | {layout} | {name} | {two:.1f} | {one:.1f} | {alone_us:.1f} "
        f"| {one / two:.2f} | {one / alone_us:.2f} | {gbs:.0f} | {'one pass' if picks else 'count + torch'} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--backends", nargs="+", help="default: cpu on CPU; cuda and triton (those loaded) on CUDA")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=DEFAULT_DTYPES)
    parser.add_argument("--rounds", type=int, default=None, help="default 60 on CPU, 20 on CUDA")
    parser.add_argument("--reps", type=int, default=10, help="calls per round on CUDA")
    parser.add_argument("--quick", action="store_true", help="one small map (a check that the script runs)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (20 if args.device == "cuda" else 60)
    loaded = nepenthe.available_backends(args.device)
    backends = args.backends or (["cpu"] if args.device == "cpu" else [b for b in ("cuda", "triton") if b in loaded])
    missing = [b for b in backends if b not in loaded]
    if missing or not backends:
        raise SystemExit(f"backend(s) {missing or backends} not loaded on {args.device}: `python -m nepenthe doctor`")
    if args.device == "cuda":
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; GPU time a call, {args.reps} calls a round")
    else:
        cpu = platform.processor() or platform.machine()
        print(f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print()
    print("| backend | model | tensor | shape | layout | dtype | count + torch (us) | one pass (us) "
          "| torch alone (us) | one pass / count + torch | one pass / torch alone | one pass GB/s "
          "| fused_activation_ takes |")  # fmt: skip
    print("|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    cases = QUICK_CASES if args.quick else (CUDA_CASES if args.device == "cuda" else CPU_CASES)
    for backend in backends:
        for case in cases:
            for name in args.dtypes:
                for channels_last in (False, True):
                    print(measure(case, DTYPES[name], channels_last, args.device, backend, args), flush=True)


if __name__ == "__main__":
    main()
