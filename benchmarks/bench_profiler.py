"""Forward-pass overhead of the profiler: plain model vs hook mode vs fused mode vs a naive user hook.

Usage::

    python benchmarks/bench_profiler.py                      # CPU: batch 32, 224x224, fp32
    python benchmarks/bench_profiler.py --device cuda        # GPU: batch 128, 224x224, autocast bf16
    python benchmarks/bench_profiler.py --threads 1 --clock cpu   # on a shared, loaded machine (see below)
    python benchmarks/bench_profiler.py --models resnet18 --batch 8 --repeats 3 --cycles 2   # quick look

Each mode is set up, warmed up with one forward pass (hook mode's first pass also runs the one-time
functional-activation check), then timed ``--repeats`` times and torn down; the cycle of the four modes runs
``--cycles`` times, so the load of a shared machine hits every mode alike. The table gives the median time per
forward pass and the overhead over the plain model's median, and the overhead of the minimum times (less
sensitive to other processes' load on a shared machine). The naive hook is what a user would write without nepenthe:
a forward hook per activation adding ``(out > 0).sum(dim=non-channel dims)`` into a tensor.

``--clock cpu`` times the process's CPU time (``time.process_time``) instead of wall time. With ``--threads 1``
it measures the work a forward pass does and is far less sensitive than wall time to other processes sharing
the cores (memory-bandwidth contention still shows). CUDA always uses wall time with synchronisation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import nepenthe
from nepenthe.kernels.dispatch import select_backend

MODELS = {
    "resnet18": torchvision.models.resnet18,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
    "swin_t": torchvision.models.swin_t,
}
MODES = ("plain", "hooks", "fused", "naive hook")


class NaiveHooks:
    """``(out > 0).sum(dim=...)`` in a forward hook on every activation module (channel dim by hand)."""

    def __init__(self, model: nn.Module, token_dim: int) -> None:
        self.counts: dict[str, torch.Tensor] = {}
        self.handles = [
            m.register_forward_hook(self._hook(name, token_dim))
            for name, m in model.named_modules()
            if nepenthe.activation_spec(m) is not None
        ]

    def _hook(self, name: str, token_dim: int) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            dim = 1 if out.dim() <= 2 else token_dim % out.dim()
            on = (out > 0).sum(dim=[d for d in range(out.dim()) if d != dim])
            self.counts[name] = self.counts[name] + on if name in self.counts else on

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_mode(
    model: nn.Module, x: torch.Tensor, mode: str, repeats: int, autocast: bool, token_dim: int, clock: Callable
) -> list[float]:
    if mode == "hooks":
        tool = nepenthe.profile(model)
    elif mode == "fused":
        tool = nepenthe.profile(model, fused=True)
    elif mode == "naive hook":
        tool = NaiveHooks(model, token_dim)
    else:
        tool = None
    times = []
    try:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            for i in range(repeats + 1):
                _sync(x.device)
                start = clock()
                model(x)
                _sync(x.device)
                if i:  # the first pass is warm-up
                    times.append(clock() - start)
    finally:
        if tool is not None:
            tool.remove()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CPU, 128 on CUDA")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 32)
    clock = time.process_time if args.clock == "cpu" and not cuda else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = select_backend(device, None).NAME
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if cuda else f'{torch.get_num_threads()} threads'}), "
        f"batch {batch}, {args.size}x{args.size}, {'autocast bf16' if cuda else 'fp32'}, inference_mode; "
        f"counting backend: {backend} (loaded for {device.type}: {nepenthe.available_backends(device)}); "
        f"torch {torch.__version__}; {'CPU' if clock is time.process_time else 'wall'} time, "
        f"median of {args.repeats} x {args.cycles} forward passes"
    )
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = MODELS[name]().eval().to(device)
        x = torch.randn(batch, 3, args.size, args.size, device=device)
        token_dim = -1 if name == "swin_t" else 1
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(args.cycles):
            for mode in MODES:
                times[mode] += time_mode(model, x, mode, args.repeats, cuda, token_dim, clock)
        med = {m: statistics.median(t) for m, t in times.items()}
        rows.append((name, med, {m: min(t) for m, t in times.items()}))
        print(f"  {name}: " + ", ".join(f"{m} {1e3 * med[m]:.1f} ms" for m in MODES), flush=True)
    print()
    print("| model | plain (ms) | hooks (ms) | fused (ms) | naive hook (ms) | hooks overhead | fused overhead "
          "| naive overhead | overheads of minima (hooks / fused / naive) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, med, low in rows:
        ratios = [f"{100 * (med[m] / med['plain'] - 1):+.1f}%" for m in MODES[1:]]
        low_ratios = " / ".join(f"{100 * (low[m] / low['plain'] - 1):+.1f}%" for m in MODES[1:])
        cells = " | ".join(f"{1e3 * med[m]:.1f}" for m in MODES)
        print(f"| {name} | {cells} | " + " | ".join(ratios) + f" | {low_ratios} |")


if __name__ == "__main__":
    main()
