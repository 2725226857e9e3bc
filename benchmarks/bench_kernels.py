"""Time the counting kernels on real activation shapes against the naive count and a plain read of the tensor.

For each backend available on the device, and activation shapes of ResNet-18, MobileNet-V2 and Swin-T at batch
32, in float32/float16/bfloat16, NCHW and channels_last, it times ``count_states`` against

- naive: ``(x > 0).sum(dim=...)``, the per-channel count one would write in PyTorch;
- sum: ``x.sum()``, one read of the same bytes: the practical bandwidth ceiling;

then the fused activation kernels against torch's activation alone and against activation + separate count.
Prints markdown tables (time, GB/s, speed-up over naive, ratio to sum).

Usage::

    python benchmarks/bench_kernels.py --device cpu --quick
    python benchmarks/bench_kernels.py --device cpu --more-shapes --no-fused --dtypes fp32   # 7 more maps
    python benchmarks/bench_kernels.py --device cuda --out results/gpu/kernels.md
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

import nepenthe
from nepenthe import count_states, fused_activation


@dataclass(frozen=True)
class Case:
    """One activation tensor as a model produces it."""

    model: str
    what: str
    shape: tuple[int, ...]  # logical shape at batch 32
    channel_dim: int
    kind: str  # the activation that follows (fused benchmark)
    params: dict[str, object]
    thresholds: tuple[float, ...]
    layouts: tuple[str, ...]  # "nchw", "channels_last" or "natural" (token tensors)


RELU6 = {"min_val": 0.0, "max_val": 6.0}  # hardtanh as ReLU6
CASES = [
    Case("ResNet-18", "layer1 ReLU", (32, 64, 56, 56), 1, "relu", {}, (0.0,), ("nchw", "channels_last")),
    Case("ResNet-18", "layer4 ReLU", (32, 512, 7, 7), 1, "relu", {}, (0.0,), ("nchw", "channels_last")),
    Case(
        "MobileNet-V2",
        "block1 ReLU6",
        (32, 96, 112, 112),
        1,
        "hardtanh",
        RELU6,
        (0.0, 6.0),
        ("nchw", "channels_last"),
    ),
    Case(
        "MobileNet-V2",
        "last ReLU6",
        (32, 1280, 7, 7),
        1,
        "hardtanh",
        RELU6,
        (0.0, 6.0),
        ("nchw", "channels_last"),
    ),
    Case("Swin-T", "stage1 MLP GELU", (32, 56, 56, 384), -1, "gelu", {"approximate": "none"}, (0.0,), ("natural",)),
]
# --more-shapes: the other activation maps of ResNet-18 and MobileNet-V2 (the inverted-residual blocks' expanded
# maps), whose sizes fall between the table's: NCHW rows of 196 and 784 values, 128-960 channels.
MORE_CASES = [
    Case("ResNet-18", "layer2 ReLU", (32, 128, 28, 28), 1, "relu", {}, (0.0,), ("nchw", "channels_last")),
    Case("ResNet-18", "layer3 ReLU", (32, 256, 14, 14), 1, "relu", {}, (0.0,), ("nchw", "channels_last")),
    *(
        Case("MobileNet-V2", f"{c}x{h}x{h} ReLU6", (32, c, h, h), 1, "hardtanh", RELU6, (0.0, 6.0),
             ("nchw", "channels_last"))
        for c, h in [(144, 56), (192, 28), (384, 14), (576, 14), (960, 7)]
    ),
]  # fmt: skip
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_input(case: Case, layout: str, dtype: torch.dtype, device: str, batch: int) -> torch.Tensor:
    shape = (batch, *case.shape[1:])
    x = torch.randn(shape, device=device, dtype=torch.float32).mul_(2).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


MAX_ROUNDS = 5000
CUDA_SAMPLE_SECONDS = 1e-3
CUDA_MAX_CALLS = 200


def cpu_rounds(reps: int, min_seconds: float, round_seconds: float) -> int:
    """Rounds for a CPU timing: at least ``reps``, and enough to spend ``min_seconds`` when one round is short.

    The best of a fixed few rounds is still falling for calls of tens of microseconds (caches, frequency and the
    allocator settle over hundreds of calls), while slow calls converge in a few rounds: so short calls get more.
    """
    if round_seconds <= 0:
        return MAX_ROUNDS
    return max(reps, min(MAX_ROUNDS, math.ceil(min_seconds / round_seconds)))


def timer(device: str, reps: int, min_seconds: float = 0.0) -> Callable[[Callable[[], object]], float]:
    """A function that returns the seconds of one call (after a warm-up): best of ``reps`` (or more, see
    ``cpu_rounds``) on CPU; on GPU the median of ``reps`` CUDA-event samples of back-to-back calls, per call."""

    def cpu_time(fn: Callable[[], object]) -> float:
        # Best of the rounds: on a shared CPU the other processes only ever add time, so the minimum is the
        # estimate least polluted by them.
        start = time.perf_counter()
        fn()
        samples = []
        for _ in range(cpu_rounds(reps, min_seconds, time.perf_counter() - start)):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return min(samples)

    def cuda_time(fn: Callable[[], object]) -> float:
        # Back-to-back calls between one pair of events, as a model's forward pass issues them: the host's launch
        # cost hides behind the previous kernel whenever the kernel is the longer of the two.
        calls = _cuda_calls_per_sample(fn)

        def sample() -> None:
            for _ in range(calls):
                fn()

        return _median_event_seconds(sample, reps) / calls

    return cuda_time if device.startswith("cuda") else cpu_time


def timer_together(
    device: str, reps: int, min_seconds: float = 0.0
) -> Callable[[list[Callable[[], object]]], list[float]]:
    """Like ``timer``, for several functions whose times are compared: on CPU they run in turn within each round
    (best of the same rounds each), so a slow spell of a shared machine hits them alike rather than only the
    one that happened to be measured then."""
    if device.startswith("cuda"):
        one = timer(device, reps)
        return lambda fns: [one(fn) for fn in fns]

    def cpu_times(fns: list[Callable[[], object]]) -> list[float]:
        start = time.perf_counter()
        for fn in fns:
            fn()
        rounds = cpu_rounds(reps, min_seconds, time.perf_counter() - start)
        best = [float("inf")] * len(fns)
        for _ in range(rounds):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - start)
        return best

    return cpu_times


def machine(device: str) -> str:
    """The hardware the numbers came from."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def _cuda_calls_per_sample(fn: Callable[[], object]) -> int:
    """After a warm-up call: how many calls of ``fn`` last about CUDA_SAMPLE_SECONDS (at most CUDA_MAX_CALLS)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return max(1, min(CUDA_MAX_CALLS, math.ceil(CUDA_SAMPLE_SECONDS / (time.perf_counter() - start))))


def _median_event_seconds(sample: Callable[[], object], reps: int) -> float:
    """Median over ``reps`` runs of ``sample`` of the GPU time between CUDA events recorded around it."""
    times = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        sample()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
    return statistics.median(times)


def gpu_time(fn: Callable[[], object], reps: int) -> float | None:
    """GPU seconds of one call with the host out of the way: CUDA_MAX_CALLS-bounded calls captured in a CUDA graph
    and replayed (median of ``reps`` replays, per call). None when the calls cannot be captured."""
    try:
        calls = _cuda_calls_per_sample(fn)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - a call that cannot be captured just gets no GPU-only time
        return None
    return _median_event_seconds(graph.replay, reps) / calls


def count_table(
    device: str, dtypes: list[str], batch: int, reps: int, min_seconds: float, cases: list[Case] = CASES
) -> list[str]:
    time_together = timer_together(device, reps, min_seconds)
    time_naive = timer(device, min(reps, 5))  # slow, and far from the others: fewer runs suffice
    backends = [b for b in nepenthe.available_backends(device) if b != "torch"]
    cuda = device.startswith("cuda")
    gpu_header = ("| GPU-only (ms) | GPU GB/s | GPU / sum ", "---:|---:|---:|") if cuda else ("", "")
    rows = [
        "| model | tensor | shape | layout | dtype | backend | time (ms) | GB/s | naive (ms) | x naive | sum (ms) "
        f"| / sum {gpu_header[0]}| target |",
        f"|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|{gpu_header[1]}---|",
    ]
    for case in cases:
        for layout in case.layouts:
            for name in dtypes:
                x = make_input(case, layout, DTYPES[name], device, batch)
                cd = case.channel_dim % x.dim()
                dims = tuple(d for d in range(x.dim()) if d != cd)
                nbytes = x.numel() * x.element_size()
                gigabytes = nbytes / 1e9
                naive = time_naive(lambda x=x, dims=dims: (x > 0).sum(dim=dims))
                counts = {
                    backend: partial(count_states, x, case.thresholds, channel_dim=case.channel_dim, backend=backend)
                    for backend in backends
                }
                failed = _failures(counts)
                working = [b for b in backends if b not in failed]
                read, *times = time_together([lambda x=x: x.sum(), *(counts[b] for b in working)])
                read_gpu = gpu_time(lambda x=x: x.sum(), reps) if cuda else None
                for backend, error in failed.items():
                    rows.append(
                        f"| {case.model} | {case.what} | {tuple(x.shape)} | {layout} | {name} | {backend} "
                        f"| failed: {error} | | | | | {'| | | ' if cuda else ''}| missed |"
                    )
                for backend, t in zip(working, times, strict=True):
                    row = (
                        f"| {case.model} | {case.what} | {tuple(x.shape)} | {layout} | {name} | {backend} "
                        f"| {t * 1e3:.3f} | {gigabytes / t:.1f} | {naive * 1e3:.2f} | {naive / t:.1f} "
                        f"| {read * 1e3:.3f} | {t / read:.2f} "
                    )
                    to_sum = t / read
                    if cuda:
                        tg = gpu_time(counts[backend], reps)
                        if tg is None or read_gpu is None:
                            row += "| n/a | | "
                        else:
                            to_sum = tg / read_gpu
                            row += f"| {tg * 1e3:.3f} | {gigabytes / tg:.1f} | {to_sum:.2f} "
                    rows.append(row + f"| {target(device, naive / t, to_sum, nbytes)} |")
                del x
    return rows


def l2_cache_bytes(device: str) -> int:
    """The GPU's L2 cache size (0 on CPU or when torch does not say)."""
    if not device.startswith("cuda"):
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))


def _failures(calls: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Run each call once; the error of each that raises (so that one broken backend does not end the table)."""
    failed = {}
    for name, call in calls.items():
        try:
            call()
        except Exception as err:  # noqa: BLE001 - reported in the table, the benchmark goes on
            failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"
    return failed


def target(device: str, speedup: float, to_sum: float, nbytes: int) -> str:
    """Whether a row meets issue #2's bar: on CPU >= 10x naive and <= 1.3x sum; on GPU >= 85% of sum's bandwidth
    (GPU-only times, when the calls could be captured in a CUDA graph) on tensors larger than the L2 cache (smaller
    ones are read from L2 after the first call: no bar)."""
    if device.startswith("cuda"):
        verdict = "met" if to_sum <= 1 / 0.85 else "missed"
        return verdict if nbytes > l2_cache_bytes(device) else f"in L2 ({verdict})"
    missed = [what for what, ok in (("10x naive", speedup >= 10), ("1.3x sum", to_sum <= 1.3)) if not ok]
    return "met" if not missed else "missed " + ", ".join(missed)


def _activation(x: torch.Tensor, case: Case) -> torch.Tensor:
    if case.kind == "relu":
        return F.relu(x)
    if case.kind == "hardtanh":
        return F.hardtanh(x, case.params["min_val"], case.params["max_val"])
    return F.gelu(x, approximate=case.params["approximate"])


def fused_table(
    device: str, dtypes: list[str], batch: int, reps: int, min_seconds: float, cases: list[Case] = CASES
) -> list[str]:
    time_it = timer(device, reps, min_seconds)
    backends = [b for b in nepenthe.available_backends(device) if b != "torch"]
    rows = [
        "| model | activation | shape | layout | dtype | backend | fused (ms) | torch act (ms) | act + count (ms) "
        "| fused / act |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for case in cases:
        layout = case.layouts[0]
        for name in dtypes:
            x = make_input(case, layout, DTYPES[name], device, batch)
            channels = x.shape[case.channel_dim]
            counts = torch.zeros(channels, len(case.thresholds) + 1, dtype=torch.int64, device=device)
            act = time_it(lambda x=x, c=case: _activation(x, c))
            for backend in backends:
                call = partial(
                    fused_activation, x, case.kind, counts, channel_dim=case.channel_dim, backend=backend, **case.params
                )
                error = _failures({backend: call}).get(backend)
                if error:
                    rows.append(
                        f"| {case.model} | {case.kind} | {tuple(x.shape)} | {layout} | {name} | {backend} "
                        f"| failed: {error} | | | |"
                    )
                    continue
                fused = time_it(call)
                count = partial(
                    count_states, x, case.thresholds, channel_dim=case.channel_dim, counts=counts, backend=backend
                )
                both = time_it(lambda x=x, c=case, count=count: (_activation(x, c), count()))
                rows.append(
                    f"| {case.model} | {case.kind} | {tuple(x.shape)} | {layout} | {name} | {backend} "
                    f"| {fused * 1e3:.3f} | {act * 1e3:.3f} | {both * 1e3:.3f} | {fused / act:.2f} |"
                )
            del x
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="batch 8 and fewer repetitions")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32, 8 with --quick)")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--no-fused", action="store_true", help="skip the fused-activation table")
    parser.add_argument("--out", default=None, help="also write the tables to this markdown file")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=None,
        help="CPU: short calls get more rounds, as many as fit in about this many seconds (default 0.2, 0.05 with "
        "--quick)",
    )
    parser.add_argument(
        "--more-shapes", action="store_true", help="also ResNet-18 layer2/3 and more MobileNet-V2 maps (MORE_CASES)"
    )
    args = parser.parse_args(argv)
    cases = CASES + MORE_CASES if args.more_shapes else CASES
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (8 if args.quick else 32)
    reps = 10 if args.quick else 20
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.05 if args.quick else 0.2)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    lines = [
        f"Machine: {machine(args.device)}; batch {batch}; "
        + (
            f"median of {reps} samples of back-to-back calls (each sample about {CUDA_SAMPLE_SECONDS * 1e3:g} ms); "
            f"L2 cache {l2_cache_bytes(args.device) / 2**20:.0f} MiB."
            if args.device.startswith("cuda")
            else f"best of {reps} rounds or more (short calls: as many rounds as fit in {min_seconds:g} s, at most "
            f"{MAX_ROUNDS}), x.sum() and the backends timed in turn within each round."
        ),
        "",
        "x naive = naive time / backend time (higher is better); / sum = backend time / x.sum() time (1.0 = as fast "
        "as one read of the tensor)."
        + (
            " GPU-only: the same calls replayed from a CUDA graph, so the host's launch cost is left out; the GPU "
            "target compares these."
            if args.device.startswith("cuda")
            else ""
        ),
        "",
        *count_table(args.device, dtypes, batch, reps, min_seconds, cases),
    ]
    # Each table is printed (and written) as soon as it is done, so that a run cut short keeps the count table.
    _report("\n".join(lines), args.out, "w")
    if not args.no_fused:
        lines = ["", "Fused activation + count against torch's activation alone:", ""]
        lines += fused_table(args.device, dtypes, batch, reps, min_seconds, cases)
        _report("\n".join(lines), args.out, "a")


def _report(text: str, out: str | None, mode: str) -> None:
    print(text, flush=True)
    if out:
        with open(out, mode) as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
