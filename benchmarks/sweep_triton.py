"""Sweep the Triton kernel's launch constants on a GPU: tile bytes, warps, programs per SM, loop unrolling, software
pipelining, 16-bit compares (in their own format or in float32), channel and inner blocks (fitted or widest) and
unmasked full tiles; and, to tell arithmetic from memory as what bounds a tensor, the thresholds counted (the
tensor's own, or others: a tensor whose time grows with the number of thresholds is bound by the kernel's
arithmetic, not by its reads).

For activation tensors larger than the L2 cache, in NCHW, channels_last and token layouts, it times the counting
kernel under each setting against ``x.sum()`` on the same tensor (CUDA events over back-to-back calls, and GPU-only
from a CUDA graph, as in ``bench_kernels.py``), checks every setting's counts against the torch reference, and
prints one markdown row per (tensor, setting), flushed as it goes so that a run cut short still reports what it
measured.

Usage::

    python benchmarks/sweep_triton.py                     # all tensors, triton_count's own constants
    python benchmarks/sweep_triton.py --tiles 8192 16384 --warps 4 8 --per-sm 4 8 16 --unroll 1 2   # 24 settings
    python benchmarks/sweep_triton.py --match channels_last bfloat16   # channels_last or bfloat16 tensors only
    python benchmarks/sweep_triton.py --match float16 bfloat16 --half-compares 1 0 --tiles 8192 --per-sm 4 16
    python benchmarks/sweep_triton.py --match channels_last natural --unroll 1 2 --stages 0 3   # 4 settings
    python benchmarks/sweep_triton.py --match channels_last natural --warps 4 8 --fit 0 1   # 4 settings
    python benchmarks/sweep_triton.py --match MobileNet --thresholds own 0 0,1,2   # 2, 1 and 3 thresholds
    python benchmarks/sweep_triton.py --match nchw --inner-fit 0 1   # NCHW rows in tiles that divide them
    python benchmarks/sweep_triton.py --small --warps 8 16 --per-sm 2 4   # the maps in L2 instead (no bar)
    python benchmarks/sweep_triton.py --fused --match "block1 channels_last" --tiles 8192 16384 --fit 0 1

With ``--fused`` it times the fused kernel instead (``fused_activation``, out of place: ReLU for the tensors counted
at 0, ReLU6 for those at 0 and 6; with ``--in-place``, ``fused_activation_``, the kernel with y = x), which reads
the tensor and writes as much: its ideal is twice ``x.sum()``'s time. Fused channel tiles have their own warps
(``FUSED_CHANNEL_TILE_WARPS``, ``FUSED_NARROW_TILE_WARPS``) and take ``TILE_BYTES``; ``--warps`` and ``--tiles``
set those too. Each setting's counts and output are checked against the torch reference and torch's activation.
"""

from __future__ import annotations

import argparse
import itertools
from functools import partial

import torch
from bench_kernels import gpu_time, timer

from nepenthe import count_states, fused_activation, fused_activation_
from nepenthe.kernels import triton_count

# (name, shape, channel_dim, layout, dtype, thresholds): each over 60 MiB, the H200's L2.
TENSORS = [
    ("ResNet-18 layer1", (128, 64, 56, 56), 1, "nchw", torch.float32, (0.0,)),
    ("ResNet-18 layer1", (128, 64, 56, 56), 1, "channels_last", torch.float32, (0.0,)),
    ("ResNet-18 layer1", (256, 64, 56, 56), 1, "nchw", torch.bfloat16, (0.0,)),
    ("ResNet-18 layer1", (256, 64, 56, 56), 1, "channels_last", torch.bfloat16, (0.0,)),
    ("ResNet-18 layer4", (1024, 512, 7, 7), 1, "nchw", torch.float32, (0.0,)),
    ("ResNet-18 layer4", (1024, 512, 7, 7), 1, "channels_last", torch.float16, (0.0,)),
    ("MobileNet-V2 block1", (32, 96, 112, 112), 1, "nchw", torch.float32, (0.0, 6.0)),
    ("MobileNet-V2 block1", (64, 96, 112, 112), 1, "nchw", torch.float16, (0.0, 6.0)),
    ("MobileNet-V2 block1", (32, 96, 112, 112), 1, "channels_last", torch.float32, (0.0, 6.0)),
    ("MobileNet-V2 block1", (64, 96, 112, 112), 1, "channels_last", torch.float16, (0.0, 6.0)),
    ("MobileNet-V2 block1", (64, 96, 112, 112), 1, "channels_last", torch.bfloat16, (0.0, 6.0)),
    ("Swin-T stage1 MLP", (64, 56, 56, 384), -1, "natural", torch.float16, (0.0,)),
    ("Swin-T stage1 MLP", (64, 56, 56, 384), -1, "natural", torch.bfloat16, (0.0,)),
]
# With --small, instead: bench_kernels' maps at batch 128 that the L2 holds (3-8 MB), which have no bar. On the H200
# (session 20) Triton took 1.5-3.8x x.sum()'s GPU-only time on them, where the cuda backend took 0.9-2.0x; session 26
# (fewer programs and warps for few tiles) 0.8-1.9x.
SMALL_TENSORS = [
    ("ResNet-18 layer4", (128, 512, 7, 7), 1, "nchw", torch.float32, (0.0,)),
    ("ResNet-18 layer4", (128, 512, 7, 7), 1, "channels_last", torch.float32, (0.0,)),
    ("ResNet-18 layer4", (128, 512, 7, 7), 1, "channels_last", torch.float16, (0.0,)),
    ("MobileNet-V2 last", (128, 1280, 7, 7), 1, "nchw", torch.float32, (0.0, 6.0)),
    ("MobileNet-V2 last", (128, 1280, 7, 7), 1, "nchw", torch.float16, (0.0, 6.0)),
    ("MobileNet-V2 last", (128, 1280, 7, 7), 1, "channels_last", torch.float32, (0.0, 6.0)),
    ("MobileNet-V2 last", (128, 1280, 7, 7), 1, "channels_last", torch.float16, (0.0, 6.0)),
]


# On/off constants of triton_count, each swept by its own option (1 on, 0 off, left out: the module's own value):
# option's destination: (constant, option's help).
SWITCHES = {
    "fit": ("CHANNEL_BLOCK_FIT", "channel blocks fitted to the channels, 0: the widest"),
    "inner_fit": ("INNER_BLOCK_FIT", "NCHW tiles as long as the largest power of two dividing a row, 0: the widest"),
    "unmasked": ("UNMASKED_FULL_TILES", "tiles that cover the tensor exactly read without masks, 0: with them"),
}


def make(shape: tuple[int, ...], layout: str, dtype: torch.dtype, cpu: bool = False) -> torch.Tensor:
    x = torch.randn(shape, device="cpu" if cpu else "cuda").mul_(2).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # An option left out keeps triton_count's own constants (each tile axis its own); one given sets both axes.
    parser.add_argument(
        "--tiles", type=int, nargs="+", default=[None], help="tile bytes (TILE_BYTES and CHANNEL_TILE_BYTES)"
    )
    parser.add_argument("--warps", type=int, nargs="+", default=[None], help="warps per program (both tile axes)")
    parser.add_argument("--per-sm", type=int, nargs="+", default=[None], help="programs per SM (both tile axes)")
    parser.add_argument("--unroll", type=int, nargs="+", default=[None], help="tiles per unrolled loop step")
    parser.add_argument(
        "--stages", type=int, nargs="+", default=[None], help="software pipeline stages (both tile axes; 0: none)"
    )
    parser.add_argument(
        "--half-compares",
        type=int,
        nargs="+",
        default=[1],
        help="1: 16-bit values compared in their own format, 0: in float32 (HALF_COMPARES)",
    )
    for dest, (constant, meaning) in SWITCHES.items():
        flag = "--" + dest.replace("_", "-")
        parser.add_argument(flag, type=int, nargs="+", default=[None], help=f"1: {meaning} ({constant})")
    parser.add_argument(
        "--thresholds",
        nargs="+",
        default=["own"],
        help="threshold sets counted: 'own' (the tensor's: ReLU's or ReLU6's) or comma-separated values, such as 0,6",
    )
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="no GPU: every setting on small CPU stand-ins of the tensors, through the Triton interpreter "
        "(TRITON_INTERPRET=1), counts checked and times meaningless; how the test suite checks this script runs",
    )
    parser.add_argument(
        "--match", nargs="+", default=None, help="only tensors whose 'name layout dtype' holds one of these strings"
    )
    parser.add_argument("--small", action="store_true", help="the maps in L2 (SMALL_TENSORS) instead of the large")
    parser.add_argument("--fused", action="store_true", help="time the fused kernel (relu or relu6) instead")
    parser.add_argument("--in-place", action="store_true", help="with --fused: in place (fused_activation_, y = x)")
    args = parser.parse_args(argv)
    threshold_sets = [_threshold_set(text) for text in args.thresholds]
    tensors = [
        t
        for t in (SMALL_TENSORS if args.small else TENSORS)
        if args.match is None or any(m in f"{t[0]} {t[3]} {str(t[4])[6:]}" for m in args.match)
    ]
    if args.smoke:
        sms, time_it, gpu_timer = 4, timer("cpu", 1), lambda fn, reps: None
        print("smoke run: small CPU stand-ins through the Triton interpreter; the times mean nothing")
    else:
        props = torch.cuda.get_device_properties(0)
        sms, time_it, gpu_timer = props.multi_processor_count, timer("cuda", args.reps), gpu_time
        print(f"{torch.cuda.get_device_name()}, {sms} SMs, L2 {getattr(props, 'L2_cache_size', 0) / 2**20:.0f} MiB")
    print(
        "| tensor | shape | layout | dtype | tile bytes | warps | programs/SM | unroll | stages | 16-bit compares "
        "| fitted channel blocks | fitted inner blocks | unmasked full tiles | thresholds | time (us) "
        "| / sum "
        "| GPU-only (us) | GPU GB/s | GPU / sum | counts |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---|")
    names = (
        "TILE_BYTES", "CHANNEL_TILE_BYTES", "INNER_TILE_WARPS", "CHANNEL_TILE_WARPS", "FUSED_CHANNEL_TILE_WARPS",
        "FUSED_NARROW_TILE_WARPS", "FEW_TILES_WARPS",
        "_target_programs", "MIN_TILES_PER_PROGRAM",
        "INNER_TILE_UNROLL", "CHANNEL_TILE_UNROLL", "HALF_COMPARES", "INNER_TILE_STAGES", "CHANNEL_TILE_STAGES",
        *(constant for constant, _ in SWITCHES.values()),
    )  # fmt: skip
    defaults = {name: getattr(triton_count, name) for name in names}
    try:
        for name, shape, channel_dim, layout, dtype, own_thresholds in tensors:
            x = make(_stand_in(shape, channel_dim) if args.smoke else shape, layout, dtype, args.smoke)
            gigabytes = x.numel() * x.element_size() / 1e9
            read = time_it(lambda x=x: x.sum())
            read_gpu = gpu_timer(lambda x=x: x.sum(), args.reps)
            references = {}
            settings = itertools.product(
                args.tiles, args.warps, args.per_sm, args.unroll, args.stages, args.half_compares,
                itertools.product(*(getattr(args, dest) for dest in SWITCHES)), threshold_sets,
            )  # fmt: skip
            for tile, warps, per_sm, unroll, stages, half, switches, chosen in settings:
                thresholds = own_thresholds if chosen is None else chosen
                if thresholds not in references:
                    references[thresholds] = count_states(x, thresholds, channel_dim=channel_dim, backend="torch")
                reference = references[thresholds]
                for constant, value in defaults.items():
                    setattr(triton_count, constant, value)
                triton_count.HALF_COMPARES = bool(half)
                if tile is not None:
                    triton_count.TILE_BYTES = triton_count.CHANNEL_TILE_BYTES = tile
                if unroll is not None:
                    triton_count.INNER_TILE_UNROLL = triton_count.CHANNEL_TILE_UNROLL = unroll
                if stages is not None:
                    triton_count.INNER_TILE_STAGES = triton_count.CHANNEL_TILE_STAGES = stages or None
                if warps is not None:
                    triton_count.INNER_TILE_WARPS = triton_count.CHANNEL_TILE_WARPS = warps
                    triton_count.FUSED_CHANNEL_TILE_WARPS = triton_count.FUSED_NARROW_TILE_WARPS = warps
                    triton_count.FEW_TILES_WARPS = ()  # the warps of every launch, whatever its tiles
                for (constant, _), value in zip(SWITCHES.values(), switches, strict=True):
                    if value is not None:
                        setattr(triton_count, constant, bool(value))
                if per_sm is not None:
                    triton_count._target_programs = lambda device, *tile, per_sm=per_sm: per_sm * sms
                    triton_count.MIN_TILES_PER_PROGRAM = 1  # exactly that many programs, whatever the tiles
                triton_count._static_launch.cache_clear()  # launches remembered under other constants
                if args.fused:
                    run, same = _fused_run(x, thresholds, channel_dim, reference, args.in_place)
                else:
                    run = partial(count_states, x, thresholds, channel_dim=channel_dim, backend="triton")
                    same = torch.equal(run(), reference)
                t = time_it(run)
                tg = gpu_timer(run, args.reps)
                gpu = (
                    "| n/a | | "
                    if tg is None or read_gpu is None
                    else (f"| {tg * 1e6:.1f} | {gigabytes / tg:.0f} | {tg / read_gpu:.2f} ")
                )
                print(
                    f"| {name} | {tuple(x.shape)} | {layout} | {str(dtype)[6:]} | {_shown(tile)} | {_shown(warps)} "
                    f"| {_shown(per_sm)} | {_shown(unroll)} | {_shown(stages)} "
                    f"| {'own format' if half else 'float32'} | {' | '.join(map(_shown, switches))} "
                    f"| {_listed(thresholds)} | {t * 1e6:.1f} "
                    f"| {t / read:.2f} {gpu}| {'exact' if same else 'WRONG'} |",
                    flush=True,
                )
            del x
    finally:
        for name, value in defaults.items():
            setattr(triton_count, name, value)
        triton_count._static_launch.cache_clear()


def _fused_run(
    x: torch.Tensor, thresholds: tuple[float, ...], channel_dim: int, reference: torch.Tensor, in_place: bool
):
    """A call of the fused kernel on x (ReLU at 0, ReLU6 at 0 and 6), and whether its counts and output are exact.
    ``in_place``: the call overwrites x (checked on a copy of x first)."""
    if thresholds == (0.0,):
        kind, params, want = "relu", {}, torch.relu(x)
    elif thresholds == (0.0, 6.0):
        kind, params, want = "hardtanh", {"min_val": 0.0, "max_val": 6.0}, torch.nn.functional.hardtanh(x, 0.0, 6.0)
    else:
        raise SystemExit(f"--fused times ReLU and ReLU6, whose thresholds are their own, not {thresholds}")
    counts = torch.zeros_like(reference)
    fused = fused_activation_ if in_place else fused_activation

    def run(x: torch.Tensor = x) -> torch.Tensor:
        return fused(x, kind, counts, channel_dim=channel_dim, backend="triton", **params)

    y = run(x.clone() if in_place else x)
    exact = torch.equal(counts, reference) and torch.equal(y, want)
    # In place, each setting is timed on its own copy of x, so that the next setting is checked on x's own values.
    return (partial(run, x.clone()) if in_place else run), exact


def _shown(value: int | None) -> str:
    return "default" if value is None else str(value)


def _stand_in(shape: tuple[int, ...], channel_dim: int) -> tuple[int, ...]:
    """The shape with every size but the channels' cut to at most 4 (the same channel blocks, a few positions; 4x4
    maps keep the channel tiles full where the real maps have them full)."""
    kept = channel_dim % len(shape)
    return tuple(size if d == kept else min(size, 4) for d, size in enumerate(shape))


def _threshold_set(text: str) -> tuple[float, ...] | None:
    """A --thresholds value: None for 'own' (the tensor's), else the comma-separated values."""
    if text == "own":
        return None
    return tuple(float(value) for value in text.split(","))


def _listed(thresholds: tuple[float, ...]) -> str:
    return ", ".join(f"{t:g}" for t in thresholds)


if __name__ == "__main__":
    main()
