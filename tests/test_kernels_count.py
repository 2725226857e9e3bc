"""Every compiled backend counts exactly as the torch reference (``count_states_reference``), on every layout.

Inputs are fresh random tensors (seeded per case) with many exact ties and a sprinkling of NaN, ±inf, ±0 and
denormals. Shapes are chosen so that no size is a multiple of a vector width or work-item size, channel blocks
split, rows are shorter and longer than a vector, and both kernel layouts (inner stride 1 and channel stride 1)
plus the strided gather are taken.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable

import pytest
import torch
from cuda_toolkit import find_nvcc
from special_values import DENORMAL, WORD_THRESHOLDS, values_around
from thread_checks import assert_each_thread_counted

from nepenthe.kernels import backend_status, count_states
from nepenthe.kernels.reference import count_states_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
THRESHOLD_SETS = [(0.0,), (0.0, 6.0), (-3.0, 3.0), (0.1,), (-2.5, -1.0, -0.1, 0.0, 0.5, 1.0, 3.0)]


def random_values(shape: tuple[int, ...], dtype: torch.dtype, seed: int, device: str = "cpu") -> torch.Tensor:
    """Gaussian values, 40% of them snapped to multiples of 0.5 (ties), 10% replaced by special values."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    halves = torch.round(torch.randn(shape, generator=gen, dtype=torch.float64) * 4) / 2
    x = torch.where(torch.rand(shape, generator=gen) < 0.4, halves, x)
    tiny = DENORMAL[dtype]
    specials = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, tiny, -tiny, 0.1, 6.0, -2.5, 3.0])
    pick = torch.randint(len(specials), shape, generator=gen)
    x = torch.where(torch.rand(shape, generator=gen) < 0.1, specials.double()[pick], x)
    return x.to(dtype).to(device)


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


# name -> (shape of the base tensor, how to view it, channel_dim)
LAYOUTS: dict[str, tuple[tuple[int, ...], Callable[[torch.Tensor], torch.Tensor], int]] = {
    "nchw": ((3, 5, 7, 9), lambda t: t, 1),
    "nchw_long_rows": ((2, 3, 41, 43), lambda t: t, 1),
    "channels_last": ((3, 21, 5, 7), lambda t: t.contiguous(memory_format=torch.channels_last), 1),
    "nc": ((37, 19), lambda t: t, 1),
    "nlc": ((3, 11, 33), lambda t: t, -1),
    "nhwc": ((2, 5, 7, 18), lambda t: t, -1),
    "sliced_inner": ((3, 4, 9, 10), lambda t: t[:, :, 1:8, ::3], 1),
    "sliced_channels": ((4, 12, 5, 6), lambda t: t[:, 2:11:2], 1),
    "permuted": ((4, 6, 5, 7), lambda t: t.permute(2, 1, 3, 0), 1),
    "sliced_channels_last": ((6, 20, 3, 5), lambda t: t.contiguous(memory_format=torch.channels_last)[::2], 1),
    "c1": ((5, 1, 6, 7), lambda t: t, 1),
    "c1_last": ((4, 9, 1), lambda t: t, -1),
    "vector": ((23,), lambda t: t, 0),
    "channel_first_of_3d": ((17, 4, 5), lambda t: t, 0),
    "expanded_channels": ((4, 1, 6), lambda t: t.expand(4, 5, 6), 1),  # stride 0: every channel reads one row
    "expanded_batch": ((1, 7, 9), lambda t: t.expand(3, 7, 9), -1),
}


def _case(layout: str, dtype: torch.dtype, device: str, seed: int) -> tuple[torch.Tensor, int]:
    shape, view, channel_dim = LAYOUTS[layout]
    return view(random_values(shape, dtype, seed, device)), channel_dim


def _check(x: torch.Tensor, thresholds: tuple[float, ...], channel_dim: int, ignore_ties: bool, backend: str) -> None:
    got = count_states(x, thresholds, channel_dim=channel_dim, ignore_ties=ignore_ties, backend=backend)
    want = count_states_reference(x.cpu(), thresholds, channel_dim % x.dim(), ignore_ties)
    assert got.dtype == torch.int64 and got.device == x.device
    assert torch.equal(got.cpu(), want), f"{backend}: {x.dtype} {tuple(x.shape)} {x.stride()} {thresholds}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_counts_equal_reference(device_backend, layout, dtype):
    device, backend = device_backend
    x, channel_dim = _case(layout, dtype, device, _seed(layout, dtype))
    for thresholds in THRESHOLD_SETS:
        for ignore_ties in (False, True):
            _check(x, thresholds, channel_dim, ignore_ties, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,channel_dim,channels_last",
    [
        ((1, 3, 70001), 1, False),  # a row longer than one work item
        ((300, 7, 5), 1, False),  # many short rows per work item
        ((3, 2500), 1, False),  # channel stride 1 with more channels than one channel block
        ((2, 4100, 2, 3), 1, True),
        ((401, 17), 1, False),  # channels: one vector plus a masked tail
        ((129, 5), 1, False),  # channels: fewer than one vector
        ((5, 33, 3), 0, False),  # channel_dim=0, rows of 99
        ((300, 1100), 1, False),  # channel stride 1, several work items in parallel
        ((1000, 300), 1, False),  # channels in groups of 64 over more than 255 positions (byte-lane counters)
        ((3, 320, 11, 11), 1, True),  # channels_last with 5 groups of 64 channels, 363 positions
        ((2, 96, 13, 11), 1, True),  # channels_last, 6 vectors of channels: one register tile for 16-bit types
        ((3, 64, 19, 9), 1, True),  # channels_last, 64 channels: one group of byte lanes in registers
        ((3, 320, 25, 28), 1, True),  # channels_last, 3 blocks of positions made 4 for an even split
        ((4, 3, 40001), -2, False),  # read through a stride-2 view below (strided gather), in parallel
    ],
    ids=str,
)
def test_counts_large_and_odd_sizes(device_backend, shape, channel_dim, channels_last, dtype):
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter; tests/test_kernels_triton.py covers it with small tiles")
    x = random_values(shape, dtype, _seed(shape, dtype), device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if channel_dim == -2:
        x = x[..., ::2]
    for thresholds in [(0.0,), (-3.0, 3.0), THRESHOLD_SETS[-1]]:
        _check(x, thresholds, channel_dim, ignore_ties=thresholds == (-3.0, 3.0), backend=backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape",
    [
        (3, 700, 7, 7),  # 7x7 maps: rows of 49 straddle vectors, blocks of whole rows split each slab
        (1, 2000, 7, 7),  # one outer index, in parallel: the channels are split between threads
        (2, 1500, 3, 3),  # rows of 9, several per vector
        (2, 900, 4, 4),  # rows of exactly one vector
        (2, 300, 1, 57),  # the longest row one 64-bit read of a bitmap holds
        (2, 300, 1, 58),  # one bit more: two reads per row
        (5, 130, 16, 16),  # rows of 256, the longest short row
        (7, 3, 1, 1),  # rows of one value
    ],
    ids=str,
)
def test_counts_short_rows(device_backend, shape, dtype):
    """Contiguous NCHW with short rows, the shapes of late CNN stages, counted across row and block boundaries."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter; tests/test_kernels_triton.py covers it with small tiles")
    x = random_values(shape, dtype, _seed("short", shape, dtype), device)
    for thresholds in [(0.0,), (-3.0, 3.0), THRESHOLD_SETS[-1]]:
        for ignore_ties in (False, True):
            _check(x, thresholds, 1, ignore_ties, backend)
    _check(x[:, :, :, 1:], (0.0,), 1, False, backend)  # rows that are not back to back


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced_rows"])
def test_float32_larger_than_the_cache_limit(device_backend, layout):
    """Tensors of 24 MiB and more are read from memory: the CPU kernel's row, tile and short-row loops take their
    prefetching variants (csrc/cpu/cpu_simd.h: kMemoryBytes), which these 34-37 MB float32 inputs exercise."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter; tests/test_kernels_triton.py covers it with small tiles")
    x = random_values((2, 96, 220, 220), torch.float32, _seed("from memory", layout), device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced_rows":
        x = x[:, :, :, :200]  # rows of 200 values, not back to back
    assert x.numel() * 4 >= 24 << 20
    for thresholds, ignore_ties in [((0.0,), False), ((-3.0, 3.0), True), ((0.0, 6.0), False)]:
        _check(x, thresholds, 1, ignore_ties, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", [96, 1280], ids=lambda c: f"C{c}")
def test_channels_with_one_or_repeated_positions(device_backend, dtype, channels):
    """(1, C) and (N, C) expanded from one row read every position at stride 0: the channel path's prefetch
    distance must not divide by it (it once raised SIGFPE in a profiler test)."""
    device, backend = device_backend
    row = random_values((1, channels), dtype, _seed("one row", dtype, channels), device)
    for x in (row, row.expand(300, channels), activation_values((1, channels), dtype, 3).to(device)):
        for thresholds in [(0.0,), (0.0, 6.0)]:
            _check(x, thresholds, 1, False, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 2056, 5, 7), (2, 24, 9, 11), (2, 8, 3, 3)], ids=lambda s: f"C{s[1]}")
def test_channels_last_vector_groups(device_backend, dtype, shape):
    """channels_last with whole 16-byte groups of channels: the CUDA backend reads each position's channels in
    vectors (one, or several chunks of them for 2056 channels), with 1 or 2 thresholds; more, or ties, take the
    one-channel-per-thread kernel. Each channel has its own mean, so a count given to the wrong channel shows."""
    device, backend = device_backend
    x = activation_values(shape, dtype, _seed("vector groups", shape, dtype)).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    cases = [((0.0,), False), ((0.0, 6.0), False), ((0.0, 6.0), True), ((-1.0, 0.0, 1.0), False)]
    for thresholds, ignore_ties in cases:
        _check(x, thresholds, 1, ignore_ties, backend)
    _check(x[1:], (0.0,), 1, False, backend)  # starts one image later: still aligned
    _check(x[:, :, :, 1:], (0.0, 6.0), 1, False, backend)  # positions no longer back to back


def activation_values(shape: tuple[int, ...], dtype: torch.dtype, seed: int, channel_dim: int = 1) -> torch.Tensor:
    """Post-activation-like values without NaN: each channel its own mean (so a count given to the wrong channel
    shows), a third of them exact zeros (as ReLU outputs), and a few -0.0, denormals and values on 6.0."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.linspace(-4.0, 8.0, shape[channel_dim], dtype=torch.float64)
    means = means.reshape([-1 if d == channel_dim % len(shape) else 1 for d in range(len(shape))])
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + means
    u = torch.rand(shape, generator=gen)
    x = torch.where(u < 0.33, 0.0, x)
    x = torch.where((u > 0.5) & (u < 0.51), -0.0, x)
    x = torch.where((u > 0.6) & (u < 0.61), DENORMAL[dtype], x)
    x = torch.where((u > 0.7) & (u < 0.71), 6.0, x)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "shape,channel_dim,channels_last",
    [
        ((4, 320, 9, 13), 1, True),  # 5 groups of 64 channels over 468 positions (byte-lane counters)
        ((32, 1280, 7, 7), 1, True),  # MobileNet-V2's last activation, channels_last
        ((4, 96, 15, 17), 1, True),  # MobileNet-V2's 96 channels: register tiles
        ((4, 64, 23, 29), 1, True),  # ResNet stage 1's 64 channels: byte lanes in registers, 2668 positions
        ((4, 192, 14, 14), 1, True),  # 3 groups of 64 channels, two register tiles: byte lanes from the caches
        ((4, 256, 9, 9), 1, True),  # ResNet stage 3's 256 channels: the same, 4 groups
        ((2, 6, 57, 61), 1, False),  # long rows (row path, signs counted 64 at a time, a masked tail)
        ((3, 2000, 7, 7), 1, False),  # 7x7 maps: rows counted eight at a time
        ((2, 900, 3, 3), 1, False),
        ((8, 56, 384), -1, False),  # Swin-T tokens
    ],
    ids=str,
)
@pytest.mark.parametrize("nan", [False, True], ids=["no_nan", "one_nan"])
def test_counts_activations_without_nan(device_backend, shape, channel_dim, channels_last, dtype, nan):
    """NaN-free inputs, as real activations are, take the kernels' fast paths (valid counts from sizes, signs for
    threshold 0); one NaN sends only its block down the exact path, the other blocks keep the fast one."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter; tests/test_kernels_triton.py covers it with small tiles")
    x = activation_values(shape, dtype, _seed("activations", shape, dtype), channel_dim)
    if nan:
        x.view(-1)[x.numel() // 3] = math.nan
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(device)
    for thresholds in [(0.0,), (0.0, 6.0), (-1.0, 0.0)]:
        for ignore_ties in (False, True):
            _check(x, thresholds, channel_dim, ignore_ties, backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_threshold_between_representable_values(device_backend, dtype):
    """0.1 is not a float32: values on either side of it, and float32(0.1) itself, land in the right state."""
    device, backend = device_backend
    f32 = torch.tensor(0.1, dtype=torch.float32)
    near = torch.stack([torch.nextafter(f32, torch.tensor(-1.0)), f32, torch.nextafter(f32, torch.tensor(1.0))])
    x = torch.cat([near.to(dtype), torch.tensor([0.1], dtype=dtype)]).repeat(5).reshape(5, 4).to(device)
    for ignore_ties in (False, True):
        _check(x, (0.1,), 1, ignore_ties, backend)
        _check(x, (float(f32),), 1, ignore_ties, backend)


MAP_SIZES = [(8, 8), (10, 13), (14, 14), (15, 17), (16, 16), (23, 29), (28, 28), (31, 33)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hw", MAP_SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_nchw_rows_of_58_to_1024_values(device_backend, dtype, hw):
    """Maps of 64 to 1023 values (14x14, 28x28 and the like), 27 channels and rows that start at every bit offset:
    the cpu backend counts them from bitmaps, eight rows at a time summed across one to three 512-bit windows
    (AVX-512 VPOPCNTDQ), the rest one by one; 255, 1023 and 1024 values fill a window's last 64-bit words."""
    device, backend = device_backend
    x = random_values((3, 27, *hw), dtype, _seed("rows 58-1024", dtype, *hw), device)
    for thresholds, ignore_ties in [((0.0,), False), ((0.0, 6.0), False), ((-1.0, 0.0, 1.0), True)]:
        _check(x, thresholds, 1, ignore_ties, backend)


# Thresholds >= 0 that bfloat16 holds exactly (the cpu backend compares float32 rows against them in 16 bits: each
# value rounded up to bfloat16, 32 values a compare), with sets it must count with float compares instead.
BF16_EXACT_THRESHOLDS = [
    (0.0, 6.0),
    (0.5, 1.0, 2.0),
    (0.0, 3.3895313892515355e38),
    (6.0, 256.0),
    (-0.0, 6.0),
    (0.0,),
    (1.5,),
]
NOT_BF16_EXACT_THRESHOLDS = [(0.0, 6.0000005), (-1.0, 6.0), (1e-45, 6.0), (-1e-45, 0.0), (6.0000005,), (-1.0,)]


def float32_values_near_bfloat16_steps(thresholds: list[float]) -> torch.Tensor:
    """Every float32 within two steps of each threshold and of the two bfloat16 rounding edges above it (its bits
    plus 0xFFFF and plus 0x10000), both signs, and +-0 and denormals: finite values, none of them huge."""
    bits = torch.tensor(thresholds, dtype=torch.float32).view(torch.int32).to(torch.int64)
    edges = torch.cat([bits, bits + 0xFFFF, bits + 0x10000])
    near = (edges[:, None] + torch.arange(-2, 3)).flatten()
    near = near[(near >= 0) & (near < 0x7F000000)].to(torch.int32)
    denormals = torch.tensor([0, 1, 0xFFFF, 0x10000, 0x7FFFFF], dtype=torch.int32)
    positive = torch.cat([near, denormals]).view(torch.float32)
    return torch.cat([positive, -positive])


@pytest.mark.parametrize(
    "shape,channels_last",
    [
        ((2, 37, 7, 7), False),
        ((2, 11, 14, 14), False),
        ((1, 3, 31, 33), False),
        ((3, 2, 5, 3), False),
        ((2, 3, 1, 1100), False),
        ((1, 2, 40, 40), False),
        ((2, 1280, 7, 7), True),
        ((3, 192, 5, 3), True),
        ((2, 100, 3, 3), True),
        ((2, 144, 5, 7), True),
        ((3, 16, 9, 11), True),
        ((1, 384, 4, 5), True),
    ],
    ids=str,
)
def test_float32_against_bfloat16_thresholds(device_backend, shape, channels_last):
    """float32 values next to each threshold and next to the bfloat16 steps above it: thresholds that bfloat16
    holds count them from the values rounded up to bfloat16 (the cpu backend's NCHW bitmaps, its long NCHW rows
    (1100 and 1600 values), its channels_last byte lanes of 64 channels after a threshold 0.0, and its channels_last
    word lanes of up to 192 channels, or 384 with one threshold), and any other set (negative, between bfloat16
    values) must not. A few of the largest finite values and their neighbours are sprinkled in (a block's or row's
    float sum stays finite, so its values take that path too); every bitmap size leaves a partial step of 32 values,
    the rows of 1100 a partial step of 64 and those of 1600 none, 100 channels a tail after one group of 64, and 144
    and 16 channels a last word group of 16. A second tensor adds a NaN and an infinity, which send their blocks and
    rows to the float compares."""
    device, backend = device_backend
    pool = float32_values_near_bfloat16_steps([t for ts in BF16_EXACT_THRESHOLDS for t in ts])
    gen = torch.Generator().manual_seed(_seed("bf16 thresholds", *shape))
    x = pool[torch.randint(0, len(pool), shape, generator=gen)]
    huge = torch.tensor([0x7F7F0000 - 1, 0x7F7F0000, 0x7F7F0001, 0x7F7FFFFF], dtype=torch.int32).view(torch.float32)
    rows = x.view(-1, shape[-2] * shape[-1])
    # NCHW: one in a row, every third row, so that no lane of a block's float sum overflows; channels_last blocks
    # sum all positions of 16 channels per lane: one in the tensor
    for r in range(0, 1 if channels_last else rows.shape[0], 3):
        rows[r, (5 * r) % rows.shape[1]] = huge[r % 4] * (1 if r % 2 else -1)
    special = x.clone()
    special.view(-1)[x.numel() // 2] = math.nan
    special.view(-1)[x.numel() // 3] = math.inf
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for values in (x.contiguous(memory_format=layout).to(device), special.contiguous(memory_format=layout).to(device)):
        for thresholds in BF16_EXACT_THRESHOLDS + NOT_BF16_EXACT_THRESHOLDS:
            for ignore_ties in (False, True):
                _check(values, thresholds, 1, ignore_ties, backend)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels", [96, 40, 64], ids=lambda c: f"C{c}")
def test_16bit_thresholds_between_representable_values(device_backend, dtype, channels):
    """float16/bfloat16 channels (channels_last) against thresholds that the format cannot hold, lies beyond, or
    holds with neighbours: each value next to a threshold lands in the right state. NaN-free, so the kernels that
    compare 16-bit values in their own bits keep that path; 40 channels leave a tail of 8 to the float32 path."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter; tests/test_kernels_triton.py covers it with small tiles")
    pool = values_around([t for ts in WORD_THRESHOLDS for t in ts], dtype)
    gen = torch.Generator().manual_seed(_seed("16bit", dtype, channels))
    n, h, w = 3, 11, 13
    picks = torch.randint(0, len(pool), (n, channels, h, w), generator=gen)
    x = pool[picks].contiguous(memory_format=torch.channels_last).to(device)
    for thresholds in WORD_THRESHOLDS:
        for ignore_ties in (False, True):
            _check(x, thresholds, 1, ignore_ties, backend)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hw", [(7, 7), (16, 16), (17, 19), (16, 20), (1, 301)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_16bit_rows_thresholds_between_representable_values(device_backend, dtype, hw):
    """The same values in contiguous NCHW rows, where the cpu backend compares 16-bit values in their own bits:
    short rows (49 and 256 values) through bitmaps (AVX2 builds), longer rows (323, 320 and 301 values, so a tail
    that is and is not a whole vector) through lane counters. One row of each tensor also holds a NaN, which sends
    that row, or its block of rows, to the float32 comparisons."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter; tests/test_kernels_triton.py covers it with small tiles")
    pool = values_around([t for ts in WORD_THRESHOLDS for t in ts], dtype)
    gen = torch.Generator().manual_seed(_seed("16bit-rows", dtype, *hw))
    x = pool[torch.randint(0, len(pool), (2, 5, *hw), generator=gen)]
    x[1, 3].view(-1)[hw[0] * hw[1] // 2] = -math.nan
    x = x.to(device)
    for thresholds in WORD_THRESHOLDS:
        for ignore_ties in (False, True):
            _check(x, thresholds, 1, ignore_ties, backend)


def test_ties_hand_counted(device_backend):
    device, backend = device_backend
    x = torch.tensor([[-1.0, 0.0, 0.0, 2.0, 6.0, 7.0, math.nan]], device=device).T.contiguous()  # (N=7, C=1)
    assert count_states(x, (0.0, 6.0), backend=backend).tolist() == [[3, 2, 1]]
    assert count_states(x, (0.0, 6.0), ignore_ties=True, backend=backend).tolist() == [[1, 1, 1]]


@pytest.mark.parametrize("shape,channel_dim", [((0, 3, 4), 1), ((2, 3, 0), 1), ((4, 0), 1), ((2, 0, 5), -1)])
def test_empty_tensors(device_backend, shape, channel_dim):
    device, backend = device_backend
    x = torch.empty(shape, device=device)
    got = count_states(x, (0.0, 1.0), channel_dim=channel_dim, backend=backend)
    assert got.shape == (shape[channel_dim], 3) and int(got.abs().sum()) == 0


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced_inner"])
def test_counts_accumulate_in_place(device_backend, layout):
    device, backend = device_backend
    x, channel_dim = _case(layout, torch.float32, device, _seed("acc", layout))
    channels = x.shape[channel_dim]
    start = torch.randint(0, 1000, (channels, 3), generator=torch.Generator().manual_seed(1))
    counts = start.clone().to(device)
    out = count_states(x, (-1.0, 1.0), channel_dim=channel_dim, counts=counts, backend=backend)
    assert out is counts
    want = start + count_states_reference(x.cpu(), (-1.0, 1.0), channel_dim, False)
    assert torch.equal(counts.cpu(), want)
    count_states(x, (-1.0, 1.0), channel_dim=channel_dim, counts=counts, backend=backend)
    assert torch.equal(counts.cpu(), want + (want - start))


def test_backends_agree_on_channels_last_activation(device_backend):
    """A realistic post-conv activation (channels_last, bf16): the backend, the reference and torch agree."""
    device, backend = device_backend
    x = random_values((4, 32, 9, 11), torch.bfloat16, 7, device).contiguous(memory_format=torch.channels_last)
    got = count_states(x, (0.0,), backend=backend)
    positive = (x > 0).sum(dim=(0, 2, 3))
    assert torch.equal(got[:, 1], positive)


def test_concurrent_calls_from_python_threads(device_backend):
    """Compiled kernels release the GIL: four Python threads counting at once (each its own tensors, paths and
    accumulators, the CPU ones with OpenMP threads of their own) still count exactly as the reference."""
    device, backend = device_backend
    if device == "cpu" and backend != "cpu":
        pytest.skip(
            "the Triton interpreter and the CUDA emulation are stand-ins for GPU kernels, too slow for 1280 calls"
        )
    cases = [  # (tensor, thresholds, channel_dim): each large enough for the CPU's parallel paths
        (random_values((8, 256, 7, 7), torch.float32, 1, device), (0.0, 6.0), 1),
        (
            random_values((4, 64, 16, 16), torch.bfloat16, 2, device).contiguous(memory_format=torch.channels_last),
            (0.0,),
            1,
        ),
        (random_values((4, 197, 96), torch.float16, 3, device), (-1.0, 0.0, 1.0), -1),
        (random_values((4, 48, 30, 30), torch.float32, 4, device)[:, :, ::2, 1:], (0.5,), 1),
        (random_values((4, 64, 300), torch.float64, 5, device), (0.0,), 1),
    ]
    want = [count_states_reference(x.cpu(), th, cd % x.dim(), False) for x, th, cd in cases]
    rounds = 64

    def work(worker: int) -> list[torch.Tensor]:
        order = [(worker + i) % len(cases) for i in range(len(cases))]  # each thread in its own order
        counts = [torch.zeros_like(w, device=device) for w in want]
        for _ in range(rounds):
            for i in order:
                x, th, cd = cases[i]
                count_states(x, th, channel_dim=cd, counts=counts[i], backend=backend)
        return counts

    assert_each_thread_counted(work, want, rounds)


@pytest.mark.slow
@pytest.mark.parametrize("by_channel", [False, True], ids=["rows", "channels"])
def test_more_than_2_31_elements(device_backend, by_channel):
    """64-bit indexing: 2^31 + 14 float16 values (4 GiB), with values at the far end counted by hand."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("2^31 elements are far too many for the Triton interpreter")
    n = 2**30 + 7
    x = torch.ones((n, 2) if by_channel else (2, n), dtype=torch.float16, device=device)
    cols = x if by_channel else x.T  # (n, 2) view: row i, channel c
    cols[:100, 0] = -1.0
    cols[-1000:, 0] = 0.0
    cols[-5:, 1] = math.nan
    cols[-3:-1, 1] = -2.0  # overrides two of the NaNs
    counts = count_states(x, (0.0,), channel_dim=1 if by_channel else 0, backend=backend).cpu()
    assert counts.tolist() == [[1100, n - 1100], [2, n - 5]]


def test_cpu_extension_loads():
    """The build made nepenthe._cpu and the dispatcher loaded it (CI installs with `pip install -e .`)."""
    status = {s.name: s for s in backend_status()}
    assert status["cpu"].loaded, status["cpu"].reason


def test_cuda_extension_compiled():
    """Where nvcc is found (and the CUDA build is not switched off) the build made nepenthe._cuda.

    Importing it needs no GPU: the CUDA runtime is linked statically and only looks for a driver when called.
    """
    if os.environ.get("NEPENTHE_BUILD_CUDA") == "0" or find_nvcc() is None:
        pytest.skip("the CUDA extension is not built here (no nvcc, or NEPENTHE_BUILD_CUDA=0)")
    try:
        import nepenthe._cuda as ext
    except ImportError as err:
        pytest.fail(f"nvcc is here but nepenthe._cuda was not built ({err}); rebuild with `pip install -e .`")
    assert ext.runtime_version() >= 11000
    assert callable(ext.count) and callable(ext.fused)


@pytest.mark.parametrize("shape,channel_dim", [((2, 600_000), 1), ((600_000, 3), 0)], ids=str)
def test_counts_more_channels_than_thread_tables_hold(device_backend, shape, channel_dim):
    """600k channels x 15 comparisons exceed the CPU kernel's per-thread tables: it adds per item instead."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("too large for the Triton interpreter")
    x = random_values(shape, torch.float32, _seed("many channels", shape), device)
    _check(x, THRESHOLD_SETS[-1], channel_dim, ignore_ties=True, backend=backend)
