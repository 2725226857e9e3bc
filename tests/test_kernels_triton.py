"""The Triton backend against the torch reference, run on CPU tensors in the Triton interpreter.

Every count must equal ``count_states_reference`` exactly; fused outputs must equal torch's activation (bit for
bit for relu/hardtanh/leaky_relu, within dtype tolerance for gelu). The interpreter is slow, so tensors are small
but shaped so that tiles are partial, programs walk several tiles and channel blocks split. The tests marked
``gpu`` run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from activation_oracles import assert_bit_equal, gelu_float64  # noqa: E402
from special_values import DENORMAL, WORD_THRESHOLDS, far_from_zero, values_around  # noqa: E402

from nepenthe.kernels import (  # noqa: E402
    available_backends,
    count_states,
    fused_activation,
    triton_backend,
)
from nepenthe.kernels.layout import ChannelView, readable_view  # noqa: E402
from nepenthe.kernels.reference import count_states_reference  # noqa: E402
from nepenthe.kernels.triton_count import (  # noqa: E402
    CHANNEL_TILE_BYTES,
    MAX_ITERS,
    TILE_BYTES,
    _cdiv,
    _pow2_at_most,
    launch_config,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
THRESHOLDS = [(0.0,), (0.0, 6.0), (-3.0, 3.0), (0.1,), (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)]

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture(autouse=True)
def triton_interpreter(request, monkeypatch):
    """This module's CPU tests run Triton kernels through the interpreter; its ``gpu`` tests run them compiled
    (with the interpreter on, CUDA tensors would be interpreted too, and the GPU build would go untested)."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _values(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random values with many exact ties (multiples of 0.5) and a sprinkling of NaN, ±inf, ±0 and denormals."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    halves = torch.round(torch.randn(shape, generator=gen, dtype=torch.float64) * 4) / 2
    x = torch.where(torch.rand(shape, generator=gen) < 0.4, halves, x)
    tiny = DENORMAL[dtype]
    specials = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, tiny, -tiny, 0.1, 6.0, 3.0, -3.0])
    pick = torch.randint(len(specials), shape, generator=gen)
    x = torch.where(torch.rand(shape, generator=gen) < 0.1, specials.double()[pick], x)
    return x.to(dtype)


def _nchw(dtype, seed):
    return _values((3, 5, 7, 9), dtype, seed), 1


def _channels_last(dtype, seed):
    return _values((3, 6, 5, 7), dtype, seed).to(memory_format=torch.channels_last), 1


def _nc(dtype, seed):
    return _values((37, 10), dtype, seed), 1


def _nlc(dtype, seed):
    return _values((3, 17, 12), dtype, seed), -1


def _nhwc(dtype, seed):
    return _values((2, 5, 6, 7), dtype, seed), -1


def _sliced(dtype, seed):
    return _values((4, 7, 9, 11), dtype, seed)[1:, 1:6, 2:8, 3:], 1


def _permuted(dtype, seed):
    return _values((2, 5, 4, 3), dtype, seed).permute(0, 3, 1, 2), 1


def _needs_copy(dtype, seed):
    return _values((2, 3, 8, 9), dtype, seed)[:, :, ::2, ::3], 1


def _expanded(dtype, seed):
    return _values((1, 4, 1, 5), dtype, seed).expand(3, 4, 6, 5), 1


def _one_channel(dtype, seed):
    return _values((4, 1, 6, 6), dtype, seed), 1


def _many_tiles_nchw(dtype, seed):
    return _values((3, 2, 70, 70), dtype, seed), 1


def _many_blocks_channels_last(dtype, seed):
    return _values((4, 300, 6, 6), dtype, seed).to(memory_format=torch.channels_last), 1


LAYOUTS = [
    _nchw, _channels_last, _nc, _nlc, _nhwc, _sliced, _permuted, _needs_copy, _expanded, _one_channel,
]  # fmt: skip


def _reference(x, thresholds, channel_dim, ignore_ties=False):
    return count_states_reference(x, tuple(float(t) for t in thresholds), channel_dim % x.dim(), ignore_ties)


def test_backend_contract_on_cpu_follows_the_interpreter(monkeypatch):
    triton_backend.load()
    assert triton_backend.NAME == "triton"
    assert triton_backend.device_problem(torch.device("cpu")) is None
    assert "triton" in available_backends("cpu")
    assert triton_backend.device_problem(torch.device("cuda", 0)) is None
    assert "CUDA" in triton_backend.device_problem(torch.device("meta"))
    x = torch.ones(2, 3)
    assert count_states(x, backend="triton").tolist() == [[0, 2]] * 3  # chosen with the interpreter on
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in triton_backend.device_problem(torch.device("cpu"))
    # The earlier choice is not remembered: with the interpreter off, asking for triton on CPU says why it cannot.
    from nepenthe.kernels import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        count_states(x, backend="triton")


@pytest.mark.parametrize("thresholds", THRESHOLDS, ids=lambda t: f"k{len(t)}:{t[0]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__.strip("_"))
def test_counts_equal_reference(layout, dtype, thresholds):
    x, channel_dim = layout(dtype, seed=zlib.crc32(f"{layout.__name__}{dtype}{thresholds}".encode()))
    for ignore_ties in (False, True):
        got = count_states(x, thresholds, channel_dim=channel_dim, ignore_ties=ignore_ties, backend="triton")
        assert torch.equal(got, _reference(x, thresholds, channel_dim, ignore_ties))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", [_many_tiles_nchw, _many_blocks_channels_last], ids=lambda f: f.__name__.strip("_"))
def test_programs_walking_several_tiles_and_channel_blocks(layout, dtype):
    x, channel_dim = layout(dtype, seed=7)
    xr, view = readable_view(x, channel_dim)
    cfg = launch_config(view, x.element_size(), target_programs=4)  # what the interpreter uses
    assert cfg.iters > 1 and cfg.programs > 1  # the case under test, not a single-tile launch
    thresholds = (-1.0, 0.0, 3.0)
    got = count_states(x, thresholds, channel_dim=channel_dim, backend="triton")
    assert torch.equal(got, _reference(x, thresholds, channel_dim))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_16bit_thresholds_between_representable_values(dtype, layout):
    """16-bit values next to thresholds that the format cannot hold, lies beyond, or holds with neighbours.
    float16 is compared in float16 here as on a GPU, against thresholds rounded down to it on the host (bfloat16
    only on a GPU: the interpreter compares it in float32)."""
    pool = values_around([t for ts in WORD_THRESHOLDS for t in ts], dtype)
    gen = torch.Generator().manual_seed(zlib.crc32(f"16bit{dtype}{layout}".encode()))
    x = pool[torch.randint(0, len(pool), (3, 6, 7, 5), generator=gen)]
    x[1, 2, 3, 4] = math.nan
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for thresholds in WORD_THRESHOLDS:
        for ignore_ties in (False, True):
            got = count_states(x, thresholds, ignore_ties=ignore_ties, backend="triton")
            assert torch.equal(got, _reference(x, thresholds, 1, ignore_ties)), (thresholds, ignore_ties)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_special_values_hand_counted(dtype):
    tiny = DENORMAL[dtype]
    x = torch.tensor([math.nan, -math.inf, -1.0, -0.0, 0.0, tiny, -tiny, 1.0, 3.0, 6.0, math.inf], dtype=dtype)
    x = x.reshape(-1, 1)  # (N, C=1)
    # states for (0, 3): -inf -1 -0 0 -tiny -> 0; tiny 1 3 -> 1; 6 inf -> 2; NaN nowhere
    assert count_states(x, (0.0, 3.0), backend="triton").tolist() == [[5, 3, 2]]
    # ties -0, 0 (with 0) and 3 (with 3) count nowhere
    assert count_states(x, (0.0, 3.0), ignore_ties=True, backend="triton").tolist() == [[3, 2, 2]]


def test_adds_into_given_counts():
    x, _ = _channels_last(torch.float32, seed=3)
    counts = torch.full((6, 3), 5, dtype=torch.int64)
    out = count_states(x, (-1.0, 1.0), counts=counts, backend="triton")
    assert out is counts
    assert torch.equal(counts, 5 + _reference(x, (-1.0, 1.0), 1))


def test_empty_tensor_counts_nothing():
    x = torch.empty(0, 4, 3, 3)
    assert torch.equal(count_states(x, (0.0,), backend="triton"), torch.zeros(4, 2, dtype=torch.int64))


@pytest.mark.parametrize(
    "shape, strides",
    [
        ((3, 2, 5), (2**30 + 16, 5, 1)),
        ((2, 3, 5), (5, 2**30 + 16, 1)),
        ((1, 5, 3), (5, 1, 2**30 + 16)),
        ((1, 8, 4), (4, 1, 2**30 + 16)),
    ],
    ids=["outer-stride", "channel-stride", "inner-stride", "inner-stride-full-tiles"],
)
def test_element_offsets_beyond_int32(shape, strides):
    # Strides that fit int32 but offsets (2 * stride) that do not. The 4-6 GiB base costs almost no memory: only
    # the pages that are touched become resident. inner-stride: tiles along the channels, several positions each, so
    # an element's offset within its tile passes 2^31; with full tiles (8 channels by 4 positions), offsets that the
    # kernel computes once, before its tile loop.
    size = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 2**20
    try:
        base = torch.empty(size, dtype=torch.float16)
    except RuntimeError as err:
        pytest.skip(f"cannot reserve {size * 2 / 2**30:.1f} GiB of address space: {err}")
    x = base.as_strided(shape, strides)
    x.copy_(_values(shape, torch.float16, seed=11))
    got = count_states(x, (-1.0, 0.0, 1.0), backend="triton")
    assert torch.equal(got, _reference(x, (-1.0, 0.0, 1.0), 1))


@pytest.mark.parametrize("states", [4, 8], ids=["int32-packing", "int64-packing"])
def test_packed_counts_at_the_iteration_cap(states):
    # Rows of 2 elements that cannot merge: 508 one-row tiles, so a program walks MAX_ITERS tiles and every element
    # slot adds MAX_ITERS into the top state's packed field (the one nearest the sign bit).
    x = torch.full((4 * MAX_ITERS, 1, 3), 10.0)[:, :, :2]
    _, view = readable_view(x, 1)
    assert launch_config(view, 4, target_programs=4).iters == MAX_ITERS
    thresholds = tuple(float(t) for t in range(states - 1))
    got = count_states(x, thresholds, backend="triton")
    assert got.tolist() == [[0] * (states - 1) + [x.numel()]]


def test_an_interpreter_that_cannot_run_the_kernel_is_reported(monkeypatch):
    """A Triton whose interpreter fails on the kernel (Triton 3.6 does, with numpy 2.4) makes the backend say why
    for CPU tensors, once checked on a tiny tensor, instead of failing deep inside the interpreter on every count."""
    from nepenthe.kernels import BackendUnavailable, triton_count

    def broken(job, act=0, params=(0.0, 0.0)):
        raise TypeError("only 0-dimensional arrays can be converted to Python scalars")

    triton_backend._interpreter_problem.cache_clear()
    try:
        with monkeypatch.context() as mp:
            mp.setattr(triton_count, "run_kernel", broken)
            problem = triton_backend.device_problem(torch.device("cpu"))
            assert "interpreter cannot run" in problem and "TypeError" in problem, problem
            with pytest.raises(BackendUnavailable, match="interpreter cannot run"):
                count_states(torch.ones(2, 3), backend="triton")
            assert "triton" not in available_backends("cpu")
    finally:
        triton_backend._interpreter_problem.cache_clear()
    assert triton_backend.device_problem(torch.device("cpu")) is None  # this Triton's interpreter runs it


def test_host_integer_helpers_match_triton():
    """The launch arithmetic uses plain-Python cdiv and next-power-of-two (Triton's are JIT functions, slow to call
    from the host): they must agree with Triton's own."""
    import triton

    for n in range(0, 5000):
        assert _pow2_at_most(n, 1 << 20) == triton.next_power_of_2(max(n, 1)), n
        for b in (1, 3, 16, 127):
            assert _cdiv(n, b) == triton.cdiv(n, b), (n, b)
    assert _pow2_at_most(1000, 256) == 256


def test_launch_config_keeps_packed_counts_and_tiles_in_range():
    huge = ChannelView(1, 3, 2**34, 0, 1, 3)  # channels_last-like, 2^35 elements
    cfg = launch_config(huge, 2, target_programs=2112)
    assert cfg.iters == MAX_ITERS  # capped: a 7-bit packed count per element and state cannot overflow
    assert cfg.programs * cfg.iters >= cfg.n_cblocks * cfg.total_tiles
    assert cfg.block_c * cfg.block_i * 2 <= CHANNEL_TILE_BYTES
    nchw = ChannelView(256, 64, 3136, 64 * 3136, 3136, 1)
    cfg = launch_config(nchw, 4, target_programs=2112)
    assert (cfg.block_c, cfg.block_i) == (1, TILE_BYTES // 4)  # tiles run along the contiguous inner axis
    cl = ChannelView(1, 768, 256 * 49, 0, 1, 768)
    cfg = launch_config(cl, 2, target_programs=2112)
    assert cfg.block_c == 256 and cfg.block_c * cfg.block_i * 2 == CHANNEL_TILE_BYTES  # tiles along the channels
    fused = launch_config(cl, 2, target_programs=2112, fused=True)
    assert fused.block_c == 256 and fused.block_c * fused.block_i * 2 == TILE_BYTES  # fused: the smaller tiles


@pytest.mark.parametrize(
    "view",
    [
        ChannelView(3, 8, 196, 8 * 196, 196, 1),  # NCHW 14x14: rows start every 196 elements
        ChannelView(4, 64, 3136, 64 * 3136, 3136, 1),  # NCHW 56x56
        ChannelView(5, 24, 49, 24 * 49, 1, 24),  # channels_last, 24 channels
        ChannelView(2, 96, 12544, 96 * 12544, 1, 96),  # channels_last, 96 channels
        ChannelView(7, 10, 1, 10, 1, 0),  # (N, C) features
        ChannelView(3, 5, 9, 7 * 11 * 9, 11 * 9, 3),  # a sliced view
        ChannelView(3, 4, 30, 0, 5, 1),  # expanded: outer stride 0
        ChannelView(3, 5, 64, 5 * 64, 1, 5),  # 5 channels_last channels, in tiles two positions wide (below)
    ],
    ids=["nchw14", "nchw56", "cl24", "cl96", "nc", "sliced", "expanded", "cl5-narrow-tiles"],
)
def test_tile_offsets_divisible_by_their_hint(view, monkeypatch):
    """The kernel tells the compiler that every tile's offset (outer index times the outer stride, plus its first
    inner position times the inner stride) is a multiple of ALIGN_XT, so that it can vectorise; a hint larger than
    what divides them would make the GPU load misaligned vectors. Every tile of each view is checked. With the
    default tiles, a row that takes several tiles takes at least 16 positions a tile; the last view's 64-byte tiles
    (a size the sweep may try) take 2, where the inner stride alone decides the hint."""
    from nepenthe.kernels import triton_count
    from nepenthe.kernels.triton_count import _tile_alignment

    if view.channels == 5:
        monkeypatch.setattr(triton_count, "CHANNEL_TILE_BYTES", 64)
    for itemsize in (2, 4):
        cfg = launch_config(view, itemsize, target_programs=4)
        align = _tile_alignment(view, cfg.block_i)
        for o in range(view.outer):
            for itile in range(cfg.n_itiles):
                offset = o * view.stride_outer + itile * cfg.block_i * view.stride_inner
                assert offset % align == 0, (view, itemsize, o, itile, align)
    assert _tile_alignment(ChannelView(4, 64, 3136, 64 * 3136, 3136, 1), 2048) == 16  # the hint says something


def test_counting_and_fused_kernels_take_their_own_launch_constants(monkeypatch):
    """Counting along the channels takes CHANNEL_TILE_BYTES, CHANNEL_TILE_WARPS and CHANNEL_TILE_PROGRAMS_PER_SM
    (tuned on the H200, session 20); fused kernels along the channels keep TILE_BYTES and their own warps and
    programs per SM; NCHW tiles take TILE_BYTES and the inner constants either way. Each constant is set to a value
    of its own here, so that a launch taking another's shows."""
    from types import SimpleNamespace

    from nepenthe.kernels import triton_count as tc

    constants = dict(
        TILE_BYTES=2048, CHANNEL_TILE_BYTES=4096, INNER_TILE_WARPS=1, CHANNEL_TILE_WARPS=2, FUSED_CHANNEL_TILE_WARPS=4,
        INNER_TILE_PROGRAMS_PER_SM=3, CHANNEL_TILE_PROGRAMS_PER_SM=5, FUSED_CHANNEL_TILE_PROGRAMS_PER_SM=7,
        FUSED_NARROW_CHANNELS=32, FUSED_NARROW_TILE_WARPS=8, FUSED_NARROW_TILE_PROGRAMS_PER_SM=13,
    )  # fmt: skip
    for name, value in constants.items():
        monkeypatch.setattr(tc, name, value)
    sms = SimpleNamespace(multi_processor_count=11)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: sms)
    tc._static_launch.cache_clear()
    tc._target_programs.cache_clear()
    try:
        channels_last = ChannelView(1, 256, 4096, 0, 1, 256)
        nchw = ChannelView(8, 64, 3136, 64 * 3136, 3136, 1)

        def launch(view, act):
            return tc._static_launch(
                view, view, 2, torch.device("cpu"), act, 2, False, torch.float32, False, True, act != 0, False
            )

        def tile_bytes(launch):
            return launch.constexprs["BLOCK_C"] * launch.constexprs["BLOCK_I"] * 2

        relu = tc.ACTIVATIONS["relu"]
        count, fused = launch(channels_last, 0), launch(channels_last, relu)
        assert (count.num_warps, tile_bytes(count)) == (2, 4096)
        assert (fused.num_warps, tile_bytes(fused)) == (4, 2048)
        for act in (0, relu):
            assert (launch(nchw, act).num_warps, tile_bytes(launch(nchw, act))) == (1, 2048)
        # 96 channels fused in blocks of 32 (narrow) take their own warps (programs: _target_programs below); counting
        # them, the count's own
        narrow = ChannelView(64, 96, 64, 96 * 64, 1, 96)
        assert (launch(narrow, relu).num_warps, tile_bytes(launch(narrow, relu))) == (8, 2048)
        assert launch(narrow, 0).num_warps == 2
        cuda = torch.device("cuda")
        assert tc._target_programs(cuda, True, False) == 5 * 11
        assert tc._target_programs(cuda, True, True) == 7 * 11
        assert tc._target_programs(cuda, True, True, True) == 13 * 11
        assert tc._target_programs(cuda, False, False) == tc._target_programs(cuda, False, True) == 3 * 11
    finally:
        tc._static_launch.cache_clear()  # launches and grids remembered under these constants
        tc._target_programs.cache_clear()


def test_tensors_of_few_tiles_take_fewer_programs():
    """With ``min_programs``, a program counts at least MIN_TILES_PER_PROGRAM tiles unless that leaves fewer than
    ``min_programs`` programs; large tensors keep the programs ``target_programs`` gives (hand-computed cases, 132 SMs:
    16 programs per SM along the inner positions, a floor of 2 per SM)."""
    from nepenthe.kernels.triton_count import MIN_TILES_PER_PROGRAM

    assert MIN_TILES_PER_PROGRAM == 8  # the cases below are worked out for 8
    layer4 = ChannelView(128, 512, 49, 512 * 49, 49, 1)  # ResNet-18 layer4, NCHW: 16 blocks of 32 rows, 128 tiles
    assert (launch_config(layer4, 4, 2112).iters, launch_config(layer4, 4, 2112).programs) == (1, 2048)
    cfg = launch_config(layer4, 4, 2112, min_programs=264)
    assert (cfg.block_c, cfg.block_i, cfg.iters, cfg.programs) == (32, 64, 8, 256)
    last = ChannelView(128, 1280, 49, 1280 * 49, 49, 1)  # MobileNet-V2's last map: 40 blocks of 32 rows
    assert launch_config(last, 4, 2112, min_programs=264).programs == 40 * 16
    half = launch_config(layer4, 2, 2112, min_programs=264)  # float16: 8 blocks of 64 rows, 1024 tiles
    assert (half.iters, half.programs) == (4, 256)  # 8 tiles a program would leave 128 programs: 4 leave 256
    layer1 = ChannelView(128, 64, 3136, 64 * 3136, 3136, 1)  # large: 8 tiles a program already
    assert launch_config(layer1, 4, 2112, min_programs=264) == launch_config(layer1, 4, 2112)
    tiny = ChannelView(1, 3, 5, 15, 5, 1)
    assert launch_config(tiny, 4, 2112, min_programs=264).programs == 1


def test_channel_tiles_of_few_tiles_a_program_take_fewer_warps(monkeypatch):
    """Counting along the channels, programs of fewer than 10 tiles take 4 warps, of fewer than 16 take 8, and the
    others CHANNEL_TILE_WARPS (FEW_TILES_WARPS); fused channel tiles and NCHW tiles keep their own warps. On a GPU
    the floor of programs is MIN_PROGRAMS_PER_SM an SM; in the interpreter there is none."""
    from types import SimpleNamespace

    from nepenthe.kernels import triton_count as tc

    monkeypatch.setattr(tc, "CHANNEL_TILE_WARPS", 16)
    monkeypatch.setattr(tc, "INNER_TILE_WARPS", 2)
    monkeypatch.setattr(tc, "FEW_TILES_WARPS", ((10, 4), (16, 8)))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=11))
    tc._static_launch.cache_clear()
    tc._min_programs.cache_clear()
    try:

        def warps(view, act=0):
            launch = tc._static_launch(
                view, view, 2, torch.device("cpu"), act, 2, False, torch.float32, False, True, act != 0, False
            )
            return launch.num_warps

        # 16 KiB of float16 tiles: 256 channels by 32 positions; the interpreter spreads them over 4 programs
        assert warps(ChannelView(1, 256, 64, 0, 1, 256)) == 4  # 2 tiles: one program counts both
        assert warps(ChannelView(1, 256, 32 * 36, 0, 1, 256)) == 4  # 36 tiles, 9 a program
        assert warps(ChannelView(1, 256, 32 * 40, 0, 1, 256)) == 8  # 40 tiles, 10 a program
        assert warps(ChannelView(1, 256, 32 * 60, 0, 1, 256)) == 8  # 60 tiles, 15 a program
        assert warps(ChannelView(1, 256, 32 * 64, 0, 1, 256)) == 16  # 64 tiles, 16 a program
        assert warps(ChannelView(1, 64, 64, 64 * 64, 64, 1)) == 2  # NCHW
        fused_warps = tc._tile_constants(True, True).warps
        assert warps(ChannelView(1, 256, 64, 0, 1, 256), tc.ACTIVATIONS["relu"]) == fused_warps  # fused: its own
        assert tc._few_tiles_warps(3, 2) == 2  # never more than the tile's own warps
        assert tc._min_programs(torch.device("cuda")) == tc.MIN_PROGRAMS_PER_SM * 11
        assert tc._min_programs(torch.device("cpu")) is None
    finally:
        tc._static_launch.cache_clear()
        tc._min_programs.cache_clear()


def test_channel_blocks_fitted_to_the_channels(monkeypatch):
    from nepenthe.kernels import triton_count

    widest = {(96, 2): 128, (384, 2): 256, (1280, 2): 256, (576, 2): 256, (96, 4): 128, (64, 4): 64, (3, 2): 4}
    fitted = {(96, 2): 32, (384, 2): 128, (1280, 2): 256, (576, 2): 64, (96, 4): 32, (64, 4): 64, (3, 2): 4}
    monkeypatch.setattr(triton_count, "CHANNEL_BLOCK_FIT", False)
    for (channels, itemsize), block in widest.items():
        assert triton_count._channel_block(channels, itemsize) == block
    monkeypatch.setattr(triton_count, "CHANNEL_BLOCK_FIT", True)
    for (channels, itemsize), block in fitted.items():
        assert triton_count._channel_block(channels, itemsize) == block, (channels, itemsize)
        assert block * itemsize >= triton_count.MIN_ROW_BYTES or block == widest[channels, itemsize]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels", [96, 160])
def test_fitted_channel_blocks_count_exactly(monkeypatch, channels, dtype):
    """With CHANNEL_BLOCK_FIT, channels_last tensors count in several narrower channel blocks (96 channels: three of
    32 rather than one of 128; 160: five of 32 rather than two of 128 or one of 256) and still exactly."""
    from nepenthe.kernels import triton_count

    monkeypatch.setattr(triton_count, "CHANNEL_BLOCK_FIT", True)
    triton_count._static_launch.cache_clear()  # launches remembered with the widest blocks
    try:
        x = _values((2, channels, 5, 3), dtype, seed=channels).to(memory_format=torch.channels_last)
        _, view = readable_view(x, 1)
        cfg = launch_config(view, x.element_size(), target_programs=4)
        assert cfg.n_cblocks > 1 and cfg.block_c < _pow2_at_most(channels, 1 << 20)
        for thresholds in [(0.0,), (0.0, 6.0)]:
            got = count_states(x, thresholds, backend="triton")
            assert torch.equal(got, _reference(x, thresholds, 1)), thresholds
    finally:
        triton_count._static_launch.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_inner_blocks_fitted_to_the_rows_count_exactly(monkeypatch, dtype):
    """With INNER_BLOCK_FIT, NCHW rows of 192 positions (64 x 3) are counted in tiles of 64 positions by as many
    channels as fill a tile (32 float32, 64 16-bit), which cover the tensor, rather than tiles of 256 positions with
    64 idle, and exactly. Too few channels to fill such a tile, and fused kernels, keep the widest tiles."""
    from nepenthe.kernels import triton_count

    monkeypatch.setattr(triton_count, "INNER_BLOCK_FIT", True)
    triton_count._static_launch.cache_clear()  # launches remembered with the widest blocks
    try:
        channels = 32 if dtype == torch.float32 else 64
        x = _full_tile_input("nchw", (2, channels, 12, 16), dtype, seed=channels)
        _, view = readable_view(x, 1)
        cfg = launch_config(view, x.element_size(), target_programs=4)
        assert (cfg.block_c, cfg.block_i) == (channels, 64) and cfg.full_tiles(view), cfg
        few = launch_config(ChannelView(2, channels // 2, 192, channels // 2 * 192, 192, 1), x.element_size(), 4)
        assert few.block_i == 256, few
        for thresholds in [(0.0,), (0.0, 6.0)]:
            got = count_states(x, thresholds, backend="triton")
            assert torch.equal(got, _reference(x, thresholds, 1)), thresholds
        counts = torch.zeros(channels, 2, dtype=torch.int64)
        y = fused_activation(x, "relu", counts, backend="triton")
        assert_bit_equal(y, F.relu(x))
        assert torch.equal(counts, _reference(x, (0.0,), 1))
        cpu = torch.device("cpu")
        for act, block_i in [(0, 64), (triton_count.ACTIVATIONS["relu"], 256)]:
            launch = triton_count._static_launch(
                view, view, x.element_size(), cpu, act, 2, False, torch.float32, False, False, False, False
            )
            assert launch.constexprs["BLOCK_I"] == block_i, (act, launch.constexprs["BLOCK_I"])
    finally:
        triton_count._static_launch.cache_clear()


# Tensors whose tiles cover them exactly (channels and inner positions multiples of the tile's), so that the kernel
# loads and stores without masks (UNMASKED_FULL_TILES): NCHW maps of 32x32 (one tile of 1024 positions a row),
# channels_last with 64 channels (tiles of 64 channels by 64 float32 or 128 16-bit positions), tokens of 128 channels.
FULL_TILE_CASES = [
    ("nchw", (3, 4, 32, 32), 1, torch.float32),
    ("nchw", (2, 4, 32, 64), 1, torch.bfloat16),
    ("channels_last", (4, 64, 4, 8), 1, torch.float32),
    ("channels_last", (4, 64, 8, 8), 1, torch.float16),
    ("tokens", (3, 64, 128), -1, torch.float16),
]


def _full_tile_input(layout, shape, dtype, seed):
    """Random values (``_values``) with inf first and NaN last in memory, where a tile that read past the tensor's
    edges, or stopped short of them, would miscount."""
    x = _values(shape, dtype, seed)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        memory = x.permute(0, 2, 3, 1).view(-1)  # the same storage, in memory order
    else:
        memory = x.view(-1)
    memory[-1] = math.nan
    memory[0] = math.inf
    return x


@pytest.mark.parametrize("unmasked", [True, False], ids=["unmasked", "masked"])
@pytest.mark.parametrize("layout, shape, channel_dim, dtype", FULL_TILE_CASES, ids=lambda v: str(v))
def test_full_tiles_count_exactly_without_masks(monkeypatch, layout, shape, channel_dim, dtype, unmasked):
    """Where tiles cover the tensor exactly, counting reads without masks (FULL_TILES) and counts exactly as with
    them; fused kernels on the same tensors keep their masks and stay exact."""
    from nepenthe.kernels import triton_count

    monkeypatch.setattr(triton_count, "UNMASKED_FULL_TILES", unmasked)
    triton_count._static_launch.cache_clear()  # launches remembered under the other setting
    try:
        x = _full_tile_input(layout, shape, dtype, seed=sum(shape))
        _, view = readable_view(x, channel_dim % x.dim())
        cfg = launch_config(view, x.element_size(), target_programs=4)
        assert cfg.full_tiles(view), cfg
        assert cfg.iters > 1 or cfg.programs > 1
        for thresholds in [(0.0,), (0.0, 6.0), (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)]:
            got = count_states(x, thresholds, channel_dim=channel_dim, backend="triton")
            assert torch.equal(got, _reference(x, thresholds, channel_dim)), thresholds
        counts = torch.zeros(x.shape[channel_dim], 3, dtype=torch.int64)
        y = fused_activation(x, "hardtanh", counts, channel_dim=channel_dim, backend="triton", min_val=0.0, max_val=6.0)
        assert_bit_equal(y, F.hardtanh(x, 0.0, 6.0))
        assert torch.equal(counts, _reference(x, (0.0, 6.0), channel_dim))
    finally:
        triton_count._static_launch.cache_clear()


def test_full_tiles_only_where_tiles_cover_the_tensor():
    def full(shape, channel_dim=1, itemsize=4, channels_last=False):
        x = torch.empty(shape)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _, view = readable_view(x, channel_dim % x.dim())
        return launch_config(view, itemsize, target_programs=4).full_tiles(view)

    assert full((3, 4, 32, 32)) and full((2, 64, 4, 8), channels_last=True) and full((3, 64, 128), -1)
    assert not full((3, 5, 7, 9))  # a 63-position row in a tile of 64
    assert not full((2, 100, 4, 8), channels_last=True)  # 100 channels in blocks of 16 (fitted) or 128
    assert not full((2, 64, 5, 7), channels_last=True)  # 70 positions in tiles of 64
    assert not full((37, 10))


FUSED = [
    ("relu", {}, True),
    ("hardtanh", {"min_val": 0.0, "max_val": 6.0}, True),
    ("hardtanh", {"min_val": -1.0, "max_val": 1.5}, True),
    ("hardtanh", {"min_val": -0.3, "max_val": 2.7}, True),  # bounds no 16-bit format holds
    ("leaky_relu", {"negative_slope": 0.01}, True),
    ("gelu", {"approximate": "none"}, False),
    ("gelu", {"approximate": "tanh"}, False),
]


@pytest.mark.parametrize(
    "bounds", [(-0.3, 2.7), (0.0, 6.0), (-1 / 3, 1e-3), (-60001.0, 1e-8), (1 + 2**-11 + 2**-40, 1.5)], ids=str
)
def test_fused_float16_clamp_of_every_value(bounds):
    """float16 relu and hardtanh clamp in float16 (half_clamp_params): every one of the 65536 float16 values, against
    bounds that float16 holds and bounds it does not (between two values, between its largest ones, below its
    smallest denormal, and one that float32 rounds to a float16 tie first, as torch does), gives torch's output bit
    for bit, and the counts."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16).reshape(256, 256)
    lo, hi = bounds
    counts = torch.zeros(256, 3, dtype=torch.int64)
    y = fused_activation(x, "hardtanh", counts, backend="triton", min_val=lo, max_val=hi)
    assert_bit_equal(y, F.hardtanh(x, lo, hi))
    assert torch.equal(counts, _reference(x, (lo, hi), 1))
    relu_counts = torch.zeros(256, 2, dtype=torch.int64)
    assert_bit_equal(fused_activation(x, "relu", relu_counts, backend="triton"), F.relu(x))
    assert torch.equal(relu_counts, _reference(x, (0.0,), 1))


def test_direct_launch_passes_constants_in_parameter_order():
    """What a direct launch (``_launch_compiled``) hands the compiled kernel's launcher after the runtime arguments:
    every compile-time constant, in the kernel's parameter order, as JITFunction.run binds them. And it launches
    directly only while no launch hook (Triton's profilers) is set."""
    import inspect

    import triton

    from nepenthe.kernels.jobs import CountJob
    from nepenthe.kernels.thresholds import kernel_thresholds
    from nepenthe.kernels.triton_count import _constexpr_args, _count_states_kernel, _no_launch_hooks, kernel_launch

    x, view = readable_view(torch.zeros(2, 24, 7, 7), 1)
    kt = kernel_thresholds((0.0, 6.0), x.dtype)
    launch = kernel_launch(CountJob(x, 1, view, (0.0, 6.0), kt, True, torch.zeros(24, 3, dtype=torch.int64)))
    params = list(inspect.signature(_count_states_kernel).parameters)
    constants = params[len(launch.args) :]
    assert constants[0] == "K" and constants[-1] == "FULL_TILES"
    assert _constexpr_args(launch) == tuple(launch.constexprs[name] for name in constants)
    assert _constexpr_args(launch)[:2] == (3, True)  # K states, IGNORE_TIES

    hook = triton.knobs.runtime.launch_enter_hook
    assert _no_launch_hooks()
    hook.add(print)
    try:
        assert not _no_launch_hooks()
    finally:
        hook.remove(print)
    assert _no_launch_hooks()


@pytest.mark.parametrize("bounds", [(-0.3, 2.7), (-1e-8, 1e-8), (-1 / 3, 1e-3)], ids=str)
def test_fused_float16_clamp_with_cuda_semantics(bounds):
    """The kernel as compiled for CUDA tensors (CLAMP_TO_BOUND: a value at or below the lower bound becomes the
    bound, as torch's CUDA hardtanh does), run in the interpreter on every float16 value. The oracle is that rule in
    float32 math, rounded to float16. A lower bound that rounds to -0.0 in float16 must still leave +0.0 alone."""
    from nepenthe.kernels.jobs import FusedJob
    from nepenthe.kernels.thresholds import kernel_thresholds
    from nepenthe.kernels.triton_count import ACTIVATIONS, interpreted_kernel, kernel_launch

    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16).reshape(256, 256)
    lo, hi = bounds
    x, view = readable_view(x, 1)
    counts = torch.zeros(256, 3, dtype=torch.int64)
    y = torch.empty_like(x)
    kt = kernel_thresholds((lo, hi), x.dtype)
    job = FusedJob(x, 1, view, (lo, hi), kt, False, counts, y=y, y_view=view, kind="hardtanh")
    launch = kernel_launch(job, ACTIVATIONS["hardtanh"], (lo, hi), compiled=False)
    interpreted_kernel()[(launch.programs,)](*launch.args, **dict(launch.constexprs, CLAMP_TO_BOUND=True))
    v, lo32, hi32 = x.float(), torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
    want = torch.where(v <= lo32, lo32, torch.where(v > hi32, hi32, v)).half()
    assert_bit_equal(y, want)
    assert torch.equal(counts, _reference(x, (lo, hi), 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind, params, exact", FUSED, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("layout", [_nchw, _channels_last, _nlc, _sliced], ids=lambda f: f.__name__.strip("_"))
def test_fused_output_and_counts(layout, kind, params, exact, dtype):
    x, channel_dim = layout(dtype, seed=5)
    if not exact:
        x = torch.where(x.isinf(), 0.0, x)  # torch's CPU gelu(±inf) is NaN, its CUDA gelu(inf) is inf
    thresholds = (params["min_val"], params["max_val"]) if kind == "hardtanh" else (0.0,)
    counts = torch.zeros(x.shape[channel_dim], len(thresholds) + 1, dtype=torch.int64)
    y = fused_activation(x, kind, counts, channel_dim=channel_dim, backend="triton", **params)
    ref = getattr(F, kind)(x, **params)
    if exact:
        assert_bit_equal(y, ref)
    else:
        torch.testing.assert_close(y, ref, equal_nan=True)
    assert torch.equal(counts, _reference(x, thresholds, channel_dim))


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # the interpreter's numpy, on inf * 0 and such
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_fused_gelu_far_from_zero(dtype, approximate):
    """GELU of values far from zero, up to the dtype's largest and infinities, against a float64 oracle (as in
    test_kernels_fused.py, which runs the other backends): +inf gives +inf, -inf NaN, large negative values about
    -0.0."""
    x = far_from_zero(dtype).reshape(1, -1)
    counts = torch.zeros(x.shape[1], 2, dtype=torch.int64)
    y = fused_activation(x, "gelu", counts, backend="triton", approximate=approximate)
    torch.testing.assert_close(y, gelu_float64(x, approximate).to(dtype), equal_nan=True)
    assert torch.equal(counts, _reference(x, (0.0,), 1))


@pytest.mark.parametrize("kind, params, exact", FUSED[::2], ids=lambda v: v if isinstance(v, str) else "")
def test_fused_gradient_matches_unfused(kind, params, exact):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    counts = torch.zeros(3, 3 if kind == "hardtanh" else 2, dtype=torch.int64)
    y = fused_activation(x, kind, counts, backend="triton", **params)
    grad = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, x, grad)
    (want,) = torch.autograd.grad(getattr(F, kind)(x, **params), x, grad)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__.strip("_"))
def test_gpu_counts_equal_reference(layout, dtype):
    x, channel_dim = layout(dtype, seed=13)
    x = x.cuda()
    for thresholds in THRESHOLDS:
        for ignore_ties in (False, True):
            got = count_states(x, thresholds, channel_dim=channel_dim, ignore_ties=ignore_ties, backend="triton")
            assert torch.equal(got, _reference(x, thresholds, channel_dim, ignore_ties))


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("setting", ["unmasked", "masked", "fitted"])
@pytest.mark.parametrize("layout, shape, channel_dim, dtype", FULL_TILE_CASES, ids=lambda v: str(v))
def test_gpu_full_tiles(monkeypatch, layout, shape, channel_dim, dtype, setting):
    """Compiled, tiles that cover the tensor count exactly with and without masks (UNMASKED_FULL_TILES), and with
    blocks fitted to the channels and the rows (CHANNEL_BLOCK_FIT, INNER_BLOCK_FIT), as the interpreter checks."""
    from nepenthe.kernels import triton_count

    monkeypatch.setattr(triton_count, "UNMASKED_FULL_TILES", setting != "masked")
    monkeypatch.setattr(triton_count, "CHANNEL_BLOCK_FIT", setting == "fitted")
    monkeypatch.setattr(triton_count, "INNER_BLOCK_FIT", setting == "fitted")
    triton_count._static_launch.cache_clear()
    try:
        x = _full_tile_input(layout, shape, dtype, seed=sum(shape)).cuda()
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        for thresholds in [(0.0,), (0.0, 6.0), (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)]:
            got = count_states(x, thresholds, channel_dim=channel_dim, backend="triton")
            assert torch.equal(got, _reference(x, thresholds, channel_dim)), thresholds
    finally:
        triton_count._static_launch.cache_clear()


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_realistic_activation_without_host_sync(dtype, memory_format):
    x = torch.randn(64, 64, 56, 56, device="cuda").to(dtype).contiguous(memory_format=memory_format)
    count_states(x, (0.0, 6.0), backend="triton")  # first call compiles and uploads the thresholds
    counts = torch.zeros(64, 3, dtype=torch.int64, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        count_states(x, (0.0, 6.0), counts=counts, backend="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(counts, _reference(x, (0.0, 6.0), 1))


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("kind, params, exact", FUSED, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_fused(kind, params, exact, dtype):
    x = _values((8, 32, 14, 14), dtype, seed=17).cuda().contiguous(memory_format=torch.channels_last)
    x = torch.where(x.isinf(), 0.0, x)
    thresholds = (params["min_val"], params["max_val"]) if kind == "hardtanh" else (0.0,)
    counts = torch.zeros(32, len(thresholds) + 1, dtype=torch.int64, device="cuda")
    y = fused_activation(x, kind, counts, backend="triton", **params)
    ref = getattr(F, kind)(x, **params)
    if exact:
        torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True)
    else:
        torch.testing.assert_close(y, ref, equal_nan=True)
    assert torch.equal(counts, _reference(x, thresholds, 1))


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through_jit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gpu_direct_launch_per_alignment(direct, dtype, monkeypatch):
    """After the first launch of a setting, later ones call the compiled kernel's launcher (DIRECT_LAUNCH), but only
    with tensors aligned as those it was compiled for: x and counts at 16 bytes, or not, in turn, each twice. A
    16-byte-aligned kernel given an unaligned x would read 16 bytes from an unaligned address (a CUDA error)."""
    from nepenthe.kernels import triton_count

    monkeypatch.setattr(triton_count, "DIRECT_LAUNCH", direct)
    triton_count._static_launch.cache_clear()  # no kernel remembered from other tests
    jit = triton_count.compiled_kernel()
    through_jit = []

    def run(*args, **kwargs):
        through_jit.append(1)
        return type(jit).run(jit, *args, **kwargs)

    monkeypatch.setattr(jit, "run", run)
    shape = (4, 24, 14, 14)
    numel = math.prod(shape)
    base = _values((numel + 16,), dtype, seed=21).cuda()
    counts_base = torch.zeros(24 * 3 + 2, dtype=torch.int64, device="cuda")
    offsets = [(0, 0), (1, 0), (0, 1), (8, 0), (1, 1)] * 2  # (x, counts) offsets in elements; (8, 0) aligned as (0, 0)
    for x_offset, counts_offset in offsets:
        x = base[x_offset : x_offset + numel].view(shape)
        counts = counts_base[counts_offset : counts_offset + 24 * 3].view(24, 3).zero_()
        count_states(x, (0.0, 1.5), counts=counts, backend="triton")
        assert torch.equal(counts, _reference(x, (0.0, 1.5), 1)), (x_offset, counts_offset)
    # Directly: one launch through JITFunction.run for each of the four alignments, the other six launched directly.
    assert len(through_jit) == (4 if direct else len(offsets))
    # With a launch hook set (as Triton's profilers set one), every launch goes through JITFunction.run, which
    # calls the hook.
    import triton

    seen = []
    triton.knobs.runtime.launch_enter_hook.add(seen.append)
    try:
        count_states(base[:numel].view(shape), (0.0, 1.5), backend="triton")
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(seen.append)
    assert len(through_jit) == (5 if direct else len(offsets) + 1) and len(seen) == 1


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gpu_tensor_over_2_pow_31_elements(channels_last):
    if torch.cuda.get_device_properties(0).total_memory < 12 * 2**30:
        pytest.skip("needs 12 GiB of GPU memory")
    shape = (2**11 + 1, 4, 512, 512)  # 2^31 + 2^20 elements, 4 GiB in float16
    x = torch.randn(shape, device="cuda", dtype=torch.float16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = count_states(x, (-1.0, 0.0, 1.0), backend="triton")
    assert int(got.sum()) == x.numel()
    assert torch.equal(got, _reference(x, (-1.0, 0.0, 1.0), 1))
