"""The Triton counting kernel (optionally fused with an activation) and the host code that launches it.

One kernel reads the ``(outer, C, inner)`` strided view of x in tiles of ``[BLOCK_C, BLOCK_I]`` (channels by
inner positions) and serves every layout: contiguous NCHW tiles run along ``inner`` (stride 1), channels_last
and token tensors ``(N, L, C)`` tiles run along the channels (stride 1). Triton specialises a stride equal to 1
and 16-divisible strides/pointers at launch, so the contiguous axis is known at compile time and loads
vectorise to 128-bit accesses whenever the addresses are aligned; the ``ALIGN_*`` constants add what the JIT does
not mark (sizes and strides divisible by 2, 4 or 8), so 14x14 feature maps and 24-channel rows vectorise too.

Each program walks ``iters`` consecutive tiles of one channel block, counts in registers and issues one atomic
add per (channel, state) at the end, so atomics stay rare and no boolean temporary ever reaches memory.
Per-element counts are packed into one integer (7 bits per state: int32 for up to 4 states, int64 for up to 8)
so that the reduction across the tile runs once per program rather than once per tile. ``iters <= 127`` keeps
every field from overflowing into the next, and no sum ever reaches the sign bit (no signed overflow, which
Triton's debug mode would flag).

CUDA tensors run the compiled kernel; CPU tensors run it in the Triton interpreter (``TRITON_INTERPRET=1``),
which is how the kernel is tested on machines without a GPU. Triton decides at import whether its own library
functions (``tl.sum``, ``tl.zeros``, ...) are compiled or interpreted, so the kernel calls only builtins: then the
interpreter works even when it was switched on after triton was imported. The one reduction goes through
``tl.reduce`` with triton's own ``_sum_combine``, which the interpreter recognises and runs as a numpy sum.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime import driver
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from .cuda_device import on_device
from .jobs import CountJob, FusedJob
from .layout import ChannelView
from .thresholds import half_clamp_params, half_thresholds

# Activation codes (the kernel's ACT constexpr); 0 = count only.
ACTIVATIONS = {"relu": 1, "hardtanh": 2, "leaky_relu": 3, "gelu_none": 4, "gelu_tanh": 5}
# The constants tensor holds the greater thresholds, then the tie values, then the activation's parameters (two,
# or five for a clamp in 16 bits: half_clamp_params).
TIE_OFFSET = tl.constexpr(8)
PARAM_OFFSET = tl.constexpr(16)
FIELD_BITS = tl.constexpr(7)
FIELD_MASK = tl.constexpr(127)
MAX_ITERS = 127
# The kernel's divisibility-hint constants: C, inner, then for x and y a tile's offset (outer index times the outer
# stride plus its first inner position times the inner stride) and the channel and inner strides.
ALIGN_NAMES = ("ALIGN_C", "ALIGN_I", "ALIGN_XT", "ALIGN_XC", "ALIGN_XI", "ALIGN_YT", "ALIGN_YC", "ALIGN_YI")
# Launch constants (_tile_constants), from benchmarks/sweep_triton.py (GPU-only times, benchmarks/gpu-results), 8 KiB
# tiles unless said:
# - Along the inner positions (NCHW): 8 warps, 16 programs per SM, the loop unrolled twice (H200 sweep, session 5;
#   the H100 sweep of session 10 found nothing clearly better). Unrolled twice, ptxas issues both tiles' loads
#   before counting either (sm_90 SASS: 4 16-byte loads per thread in flight on float16 NCHW tiles).
# - Along the channels (channels_last, tokens): 8 warps, 4 programs per SM (one wave of 32 warps) (H100 sweep,
#   session 10; fused kernels still, counting alone since session 20, below). On the H100, bench_kernels' seven
#   such tensors above L2 went from 1.04-2.50x x.sum()'s GPU time with the H200's constants (4 warps, 8 programs
#   per SM, unrolled twice) to 0.99-1.35x. The 2.50 was MobileNet-V2's 96 bfloat16 channels with two thresholds:
#   the unrolled loop took 183 registers a thread, so an SM held two programs. Since session 11's 16-bit compares
#   these loops take 40-54 registers, and unrolled twice again (H200, session 13) the Swin-T MLP's 384 channels
#   count in 0.73-0.87 of the time (16-bit 1.47 -> 1.07x x.sum(), float32 1.07 -> 0.95x), ResNet-18 layer4's 512
#   float16 channels in 0.87, the others within 4%.
#   Fused with GELU, whose loop is arithmetic rather than loads, unrolling took 5-7% longer in 16 bits: not there.
# - Counting along the channels (not fused): 16 KiB tiles, 16 warps, 2 programs per SM (H200 sweep, session 20,
#   with fitted channel blocks; GPU-only time over x.sum()'s, two runs each). ResNet-18 layer1's 64 channels_last
#   channels went from 1.21-1.23 (float32) and 1.20-1.29 (bfloat16) to 1.05-1.07 and 1.07-1.09; the other five
#   such tensors stayed where they were (MobileNet-V2 block1 16-bit 0.86-0.88 -> 0.88-0.91, Swin-T's MLP tokens
#   0.89-0.91 -> 0.89-0.91, ResNet-18 layer4 float16 in L2 1.80-1.89 -> 1.85). Same bytes a thread as before (32 a
#   tile), half as many programs, each twice as wide. 6 or 8 programs per SM were slower on every such tensor
#   (layer1 float32 1.39 and 1.59). Fused kernels keep 8 KiB tiles, 8 warps and 4 programs per SM: untimed with 16
#   warps, where a fused GELU's 80 registers a thread would let one program of 512 threads fill an SM.
TILE_BYTES = 8192
CHANNEL_TILE_BYTES = 16384
ROW_BYTES = 512
# Along the channels, fit the channel block to the channels: the power of two, down to MIN_ROW_BYTES of a row, that
# pads them least, rather than the widest (MobileNet-V2's 96 channels: three blocks of 32, not one of 128 with a
# quarter of its lanes masked off; Swin-T's 384 in 16 bits: three of 128, not two of 256). H200, session 20
# (sweep_triton.py --fit 0 1, GPU-only time over x.sum()'s, 8 warps, 4 programs per SM): MobileNet-V2 block1
# channels_last float16 1.37 -> 0.89, bfloat16 1.38 -> 0.90; Swin-T's MLP tokens float16 1.05 -> 0.89, bfloat16
# 1.06 -> 0.91; ResNet-18 layer1 channels_last unchanged (64 channels: the same block either way); ResNet-18
# layer4 channels_last float16 (512 channels, in L2) 1.84 -> 1.80.
CHANNEL_BLOCK_FIT = True
MIN_ROW_BYTES = 64
# Where the tiles cover the channels and the inner positions exactly (both sizes multiples of the tile's), count
# without masks (no bound checks, no NaN moved into the registers of masked lanes) and compute each element's offset
# within its tile once, before the tile loop (counting only: not fused kernels). sm_90 loops (4 16-byte loads a
# thread): ResNet-18 layer1's 64 float32 channels_last 181 -> 132 instructions and 40 -> 32 registers (so 8 programs
# of 8 warps fit an SM), Swin-T's float32 tokens 175 -> 132; with fitted channel blocks, MobileNet-V2's 96 16-bit
# channels 271 -> 224, Swin-T's 384 16-bit channels 221 -> 172. Untimed (no GPU since it was written):
# benchmarks/sweep_triton.py --unmasked 0 1.
UNMASKED_FULL_TILES = True
# Along the inner positions (NCHW), tiles of the largest power of two that divides a row, rather than the widest, when
# the widest leave each row's last tile partial: 56x56 maps (3136 = 64 x 49 positions) in tiles of 64 positions by up
# to 32 channels, 112x112 in tiles of 256, not rows of 2048 or 4096 whose last tile is 53% or 6% full. The tiles then
# cover the tensor (unmasked, UNMASKED_FULL_TILES) and no lane idles: sm_90, per value, ResNet-18 layer1 float32 13.1
# -> 7.8 instructions, MobileNet-V2 block1 float16 10.3 -> 6.8. Counting only (fused kernels keep the widest tiles).
# Off until a GPU times it (rows read in 256-512 byte pieces, not 8 KiB): benchmarks/sweep_triton.py --inner-fit 0 1.
INNER_BLOCK_FIT = False
MIN_INNER_ROW_BYTES = 128
INNER_TILE_WARPS, CHANNEL_TILE_WARPS, FUSED_CHANNEL_TILE_WARPS = 8, 16, 8
INNER_TILE_PROGRAMS_PER_SM, CHANNEL_TILE_PROGRAMS_PER_SM, FUSED_CHANNEL_TILE_PROGRAMS_PER_SM = 16, 2, 4
INNER_TILE_UNROLL, CHANNEL_TILE_UNROLL = 2, 2
# Fused channel tiles of at most FUSED_NARROW_CHANNELS channels (MobileNet-V2's 96 channels_last channels, in fitted
# blocks of 32) take 16 warps and 2 programs per SM. H200, session 31 (sweep_triton.py --fused, 8 KiB tiles, GPU-only
# time over x.sum()'s, which a fused kernel's read and write make 2 at best; two calls): MobileNet-V2 block1
# channels_last ReLU6 float16 2.34-2.35 -> 2.01, bfloat16 2.35-2.37 -> 2.02-2.03, float32 2.87-2.93 -> 2.43-2.47. The
# wider blocks lost with them: ResNet-18 layer1's 64 channels_last channels 2.01 -> 2.12 (float32), 1.99 -> 2.15
# (bfloat16), Swin-T's 384-channel tokens in 16 bits 1.67-1.68 -> 1.81-1.82; so they keep the fused constants above.
FUSED_NARROW_CHANNELS = 32
FUSED_NARROW_TILE_WARPS, FUSED_NARROW_TILE_PROGRAMS_PER_SM = 16, 2
# Channel blocks whose rows are narrower than a cache line, where a line holds rows of several programs' blocks (96
# 16-bit channels in blocks of 32: three programs read and write 64 bytes each of every 192-byte position). Written
# in place, such lines were read by one program while another wrote them: on the H200 (session 31, sweep_triton.py
# --fused --in-place) MobileNet-V2 block1 channels_last float16 took 3.4-4.2x x.sum()'s GPU time in place, 1.9-2.6x
# out of place under the same settings. With blocks of whole lines (float32, or the widest blocks) in place took within
# 10% of out of place. So the backend runs a count and torch's in-place activation there instead
# (channel_rows_share_lines).
LINE_BYTES = 128
# Tensors of few tiles (the maps an H200's L2 holds: ResNet-18 layer4, MobileNet-V2's last map; H200, session 26,
# sweep_triton.py --small, GPU-only time over x.sum()'s). With the programs per SM above, a program counted one or two
# NCHW tiles and then flushed its counts: ResNet-18 layer4 float32 took 1.54 of the sum with 16 programs per SM,
# 0.81 with 4 and 0.78 with 2; MobileNet-V2's last map 1.54, 1.08 with 4 and 1.12 with 2. So a program counts at
# least MIN_TILES_PER_PROGRAM tiles, unless that would leave fewer than MIN_PROGRAMS_PER_SM programs an SM (then as
# many as leave that many).
MIN_TILES_PER_PROGRAM, MIN_PROGRAMS_PER_SM = 8, 2
# Counting along the channels, programs of few tiles take fewer warps: (fewer tiles than, warps), first match. At 2
# programs per SM and 16 KiB tiles (session 26), ResNet-18 layer4 channels_last (2-3 tiles a program) took 0.92 of the
# sum with 4 warps, 1.32 with 8 and 1.72 with 16 (float32), float16 1.65, 2.04 and 3.03; MobileNet-V2's last map (4-8
# tiles) float32 1.15, 1.42 and 1.96, float16 1.86, 2.32 and 3.71. ResNet-18 layer4 at batch 1024 in float16 (12
# tiles): 1.51 with 8 warps, 1.85 with 16 (session 20: 1.54 and 1.85); 4 untimed there. The large tensors, whose
# programs count 24-127 tiles, keep CHANNEL_TILE_WARPS (session 20: MobileNet-V2 block1 channels_last float16 0.91
# with 16, 1.16 with 8).
FEW_TILES_WARPS: tuple[tuple[int, int], ...] = ((10, 4), (16, 8))
CHANNEL_TILE_GELU_UNROLL = 1
# Count float16 and bfloat16 values in their own format, and clamp them there when fused with relu or hardtanh (see
# kernel_launch); benchmarks/sweep_triton.py turns it off to time the float32 compares against it.
HALF_COMPARES = True
# Software pipelining of the tile loop (tl.range's num_stages), per tile axis: with 2 or more, the next tiles' values
# are copied to shared memory (cp.async) while a tile is counted, so each warp keeps loads in flight as it counts.
# None: the loop as written (ptxas issues a tile's loads, waits, then counts). Timed on the H200 (session 13,
# sweep_triton.py --stages 0 3): 3 stages took 14% longer on MobileNet-V2's channels_last 16-bit tensors, 13-19% on
# ResNet-18's NCHW bfloat16, 6% on its layer4 channels_last float16, and were within 2% elsewhere; with channel
# tiles unrolled twice, 25% longer on the Swin-T MLP. Off.
INNER_TILE_STAGES: int | None = None
CHANNEL_TILE_STAGES: int | None = None
# Launch a kernel already compiled for a launch's settings through its own launcher, as the end of Triton's
# JITFunction.run does, rather than through JITFunction.run, which binds and specialises all 41 arguments again on
# every call (see _launch_compiled). False: every launch goes through JITFunction.run.
DIRECT_LAUNCH = True


def _count_states_kernel(
    x_ptr,
    y_ptr,
    counts_ptr,
    consts_ptr,
    channels,
    inner,
    n_itiles,
    total_tiles,
    iters,
    n_cblocks,
    s_outer,
    s_chan,
    s_inner,
    ys_outer,
    ys_chan,
    ys_inner,
    K: tl.constexpr,
    IGNORE_TIES: tl.constexpr,
    ACT: tl.constexpr,
    CLAMP_TO_BOUND: tl.constexpr,
    COMPUTE: tl.constexpr,
    BF16: tl.constexpr,
    CMP16: tl.constexpr,
    ACT16: tl.constexpr,
    BF16_BY_HAND: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_I: tl.constexpr,
    ALIGN_C: tl.constexpr,
    ALIGN_I: tl.constexpr,
    ALIGN_XT: tl.constexpr,
    ALIGN_XC: tl.constexpr,
    ALIGN_XI: tl.constexpr,
    ALIGN_YT: tl.constexpr,
    ALIGN_YC: tl.constexpr,
    ALIGN_YI: tl.constexpr,
    UNROLL: tl.constexpr,
    STAGES: tl.constexpr,
    FULL_TILES: tl.constexpr,
):
    # 64-bit from the start: tile and element offsets of tensors over 2^31 elements overflow int32.
    pid = tl.program_id(0).to(tl.int64)
    cblock = pid % n_cblocks
    first = (pid // n_cblocks) * iters
    c = cblock * BLOCK_C + tl.arange(0, BLOCK_C)
    i_loc = tl.arange(0, BLOCK_I)
    # ALIGN_*: divisibility of (C, inner, x strides, y strides) that the JIT does not mark (it marks multiples of 16
    # only), so loads still vectorise when 14x14 rows start every 196 elements or channels_last rows hold 24.
    c_ok = c < channels
    if ALIGN_C > 1:
        c_ok = tl.max_constancy(c_ok, ALIGN_C)
    if BLOCK_C == 1:
        # One channel per tile: its offset is a scalar. (Triton 3.6 folds a [1, 1] offset into a scalar, on which a
        # two-dimensional hint fails to compile.)
        x_c = cblock * s_chan
        if ALIGN_XC > 1:
            x_c = tl.multiple_of(x_c, ALIGN_XC)
        y_c = cblock * ys_chan
        if ALIGN_YC > 1:
            y_c = tl.multiple_of(y_c, ALIGN_YC)
    else:
        x_c = c[:, None] * s_chan
        if ALIGN_XC > 1:
            x_c = tl.multiple_of(x_c, [ALIGN_XC, ALIGN_XC])
        y_c = c[:, None] * ys_chan
        if ALIGN_YC > 1:
            y_c = tl.multiple_of(y_c, [ALIGN_YC, ALIGN_YC])
    # Full tiles (counting only): each element's offset within its tile, the same in every tile, computed once, so
    # that the loop adds one scalar offset a tile rather than computing every element's address (sm_90, ResNet-18
    # layer1 channels_last float32: 151 -> 132 loop instructions for 4 16-byte loads a thread). 64-bit: positions
    # times strides can pass 2^31. Masked tiles compute their addresses in the loop: hoisted there, the offsets took up
    # to 20 more registers (fused hardtanh channels_last 16-bit 80 -> 100).
    if FULL_TILES:
        x_li = i_loc.to(tl.int64)[None, :] * s_inner
        if ALIGN_XI > 1:
            x_li = tl.multiple_of(x_li, [ALIGN_XI, ALIGN_XI])
        x_loc = x_c + x_li
    acc = tl.full([BLOCK_C, BLOCK_I], 0, dtype=ACC)
    one = tl.full([BLOCK_C, BLOCK_I], 1, dtype=ACC)
    # Thresholds and activation parameters, loaded once, before the tile loop: as far as the compiler knows, the
    # fused output's stores may overwrite consts_ptr, so loads in the loop were issued again for every tile (and
    # the tile's compares waited on them).
    greater = ()
    ties = ()
    for k in tl.static_range(K - 1):
        greater = greater + (tl.load(consts_ptr + k),)
        if IGNORE_TIES:
            ties = ties + (tl.load(consts_ptr + TIE_OFFSET + k),)
    p0 = tl.load(consts_ptr + PARAM_OFFSET)
    p1 = tl.load(consts_ptr + PARAM_OFFSET + 1)
    if ACT16:
        p2 = tl.load(consts_ptr + PARAM_OFFSET + 2)
        p3 = tl.load(consts_ptr + PARAM_OFFSET + 3)
        if not CLAMP_TO_BOUND:
            p4 = tl.load(consts_ptr + PARAM_OFFSET + 4)
    # The first tile's outer index and inner tile; later tiles step through them without a division per tile.
    o = first // n_itiles
    itile = first - o * n_itiles
    for _ in tl.range(tl.minimum(iters, total_tiles - first), loop_unroll_factor=UNROLL, num_stages=STAGES):
        first_i = itile * BLOCK_I
        if FULL_TILES:  # every tile lies inside the tensor
            x_t = o * s_outer + first_i * s_inner
            if ALIGN_XT > 1:
                x_t = tl.multiple_of(x_t, ALIGN_XT)
            raw = tl.load(x_ptr + x_t + x_loc)
        else:
            i = first_i + i_loc
            i_ok = i < inner
            if ALIGN_I > 1:
                i_ok = tl.max_constancy(i_ok, ALIGN_I)
            mask = c_ok[:, None] & i_ok[None, :]
            x_o = o * s_outer
            if ALIGN_XT > 1:
                x_o = tl.multiple_of(x_o, ALIGN_XT)
            x_i = i[None, :] * s_inner
            if ALIGN_XI > 1:
                x_i = tl.multiple_of(x_i, [ALIGN_XI, ALIGN_XI])
            # Outside the tensor reads NaN, which counts in no state: no mask in the counting below.
            raw = tl.load(x_ptr + (x_o + x_c + x_i), mask=mask, other=float("nan"))
        if BF16 and BF16_BY_HAND:
            # The interpreter: bfloat16 is the top half of a float32, so widen the bits (exact; its cast is not).
            # Compiled, the conversion below is exact, and cheaper: sm_90 fused leaky_relu, NCHW, bfloat16, 849 ->
            # 454 loop instructions (32 values), as float16's 444.
            v = (raw.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        else:
            v = raw.to(COMPUTE)
        if CMP16:
            # float16 and bfloat16 compared in their own format: two values per instruction (sm_90 HSETP2) and no
            # conversion, against thresholds that the host rounded to that format (exact in the float32 constants).
            cv = raw
        else:
            cv = v
        # One count per state, packed 7 bits apart: a single add per element for any number of states. The
        # element's field is chosen by one compare and one select of a constant per threshold: state 0 where
        # v <= t_0, then state k where v > t_(k-1), the last passed winning (the thresholds increase). NaN passes
        # none of them and adds nothing.
        if K == 1:
            field = tl.where(cv == cv, one, 0)
        else:
            field = tl.where(cv <= greater[0].to(cv.dtype), one, 0)
        for k in tl.static_range(1, K):
            field = tl.where(cv > greater[k - 1].to(cv.dtype), one << (k * FIELD_BITS), field)
        if IGNORE_TIES:
            for k in tl.static_range(K - 1):
                field = tl.where(cv != ties[k].to(cv.dtype), field, 0)
        acc += field
        if ACT16:
            # relu and hardtanh of float16 (bfloat16 when compiled) values in their own format, with no conversion:
            # compared against bounds rounded down, clamped to bounds rounded to nearest (half_clamp_params),
            # which gives what float32 math stored in 16 bits gives. NaN passes no compare and is kept.
            if ACT == 1:
                if CLAMP_TO_BOUND:
                    out = tl.where(raw <= 0.0, 0.0, raw)
                else:
                    out = tl.where(raw < 0.0, 0.0, raw)
            else:
                if CLAMP_TO_BOUND:
                    low = raw <= p0.to(raw.dtype)
                else:
                    low = (raw <= p0.to(raw.dtype)) & (raw != p4.to(raw.dtype))
                out = tl.where(low, p2.to(raw.dtype), tl.where(raw > p1.to(raw.dtype), p3.to(raw.dtype), raw))
        elif ACT == 1:
            if CLAMP_TO_BOUND:
                out = tl.where(v <= 0, 0.0, v)
            else:
                out = tl.where(v < 0, 0.0, v)
        elif ACT == 2:
            if CLAMP_TO_BOUND:
                out = tl.where(v <= p0, p0, tl.where(v > p1, p1, v))
            else:
                out = tl.where(v < p0, p0, tl.where(v > p1, p1, v))
        elif ACT == 3:
            out = tl.where(v > 0, v, v * p0)
        elif ACT == 4:
            out = v * 0.5 * (1.0 + tl.math.erf(v * 0.7071067811865476))
        elif ACT == 5:
            # 0.5 * (1 + tanh(z)) == sigmoid(2z): torch's tanh formula without cancellation for v << 0.
            z = 0.7978845608028654 * (v + 0.044715 * v * v * v)
            out = v / (1.0 + tl.exp(-2.0 * z))
        if ACT != 0:
            y_o = o * ys_outer
            if ALIGN_YT > 1:
                y_o = tl.multiple_of(y_o, ALIGN_YT)
            y_i = i[None, :] * ys_inner
            if ALIGN_YI > 1:
                y_i = tl.multiple_of(y_i, [ALIGN_YI, ALIGN_YI])
            y_off = y_o + y_c + y_i
            if BF16 and not ACT16 and BF16_BY_HAND:
                # The interpreter: round to nearest even by hand, as torch does (its float32 -> bfloat16 cast
                # rounds half up); NaN stays a quiet NaN. Compiled, the conversion below rounds so (sm_90
                # F2FP.BF16.F32.PACK_AB: one instruction for two values, where this takes about six a value).
                bits = out.to(tl.uint32, bitcast=True)
                rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
                bits = tl.where(out == out, rounded, (bits >> 16) | 0x40)
                tl.store(y_ptr + y_off, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
            else:
                tl.store(y_ptr + y_off, out.to(y_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)
        itile += 1
        wrap = itile == n_itiles
        o = tl.where(wrap, o + 1, o)
        itile = tl.where(wrap, 0, itile)
    for k in tl.static_range(K):
        n = tl.reduce((acc >> (k * FIELD_BITS)) & FIELD_MASK, 1, tl.standard._sum_combine).to(tl.int64)
        tl.atomic_add(counts_ptr + c * K + k, n, mask=c_ok & (n > 0))


@functools.cache
def compiled_kernel() -> JITFunction:
    """The kernel as a JIT function for real GPUs (also what ``triton.compile`` takes)."""
    return JITFunction(_count_states_kernel)


@functools.cache
def interpreted_kernel() -> InterpretedFunction:
    """The kernel for the Triton interpreter, which runs it on CPU tensors."""
    return InterpretedFunction(_count_states_kernel)


@functools.lru_cache(maxsize=64)
def _constants(
    greater: tuple[float, ...], tie: tuple[float, ...], params: tuple[float, ...], dtype: torch.dtype, device: str
) -> torch.Tensor:
    # Cached: the host-to-device copy happens once per threshold set, not once per counted tensor.
    values = [0.0] * (PARAM_OFFSET.value + len(params))
    values[: len(greater)] = greater
    values[TIE_OFFSET.value : TIE_OFFSET.value + len(tie)] = tie
    values[PARAM_OFFSET.value :] = params
    return torch.tensor(values, dtype=dtype, device=device)


class TileConstants(NamedTuple):
    """The launch constants of one kind of tile."""

    tile_bytes: int
    warps: int
    programs_per_sm: int


def _tile_constants(along_channels: bool, fused: bool, narrow: bool = False) -> TileConstants:
    """The launch constants of tiles along the channels or the inner positions, counting alone or fused, fused channel
    blocks ``narrow`` or not (FUSED_NARROW_CHANNELS) (read when called, so that benchmarks/sweep_triton.py can set
    them)."""
    if not along_channels:
        return TileConstants(TILE_BYTES, INNER_TILE_WARPS, INNER_TILE_PROGRAMS_PER_SM)
    if fused and narrow:
        return TileConstants(TILE_BYTES, FUSED_NARROW_TILE_WARPS, FUSED_NARROW_TILE_PROGRAMS_PER_SM)
    if fused:
        return TileConstants(TILE_BYTES, FUSED_CHANNEL_TILE_WARPS, FUSED_CHANNEL_TILE_PROGRAMS_PER_SM)
    return TileConstants(CHANNEL_TILE_BYTES, CHANNEL_TILE_WARPS, CHANNEL_TILE_PROGRAMS_PER_SM)


@functools.lru_cache(maxsize=32)
def _min_programs(device: torch.device) -> int | None:
    """The fewest programs a launch on ``device`` spreads its tiles over (see ``MIN_TILES_PER_PROGRAM``); None in the
    interpreter."""
    if device.type != "cuda":
        return None
    return MIN_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=32)
def _target_programs(device: torch.device, along_channels: bool, fused: bool, narrow: bool = False) -> int:
    if device.type == "cuda":
        # A few resident-or-queued programs per SM: full occupancy, a short tail, few atomics.
        per_sm = _tile_constants(along_channels, fused, narrow).programs_per_sm
        return per_sm * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: few programs, so the tests cover programs that walk several tiles


# Host-side integer helpers in plain Python: triton.cdiv and triton.next_power_of_2 are JIT functions, and calling
# one from the host costs microseconds.
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_most(n: int, cap: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), at most ``cap``."""
    return min(1 << max(n - 1, 0).bit_length(), cap)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile shape and work split of one launch over an ``(outer, C, inner)`` view."""

    block_c: int
    block_i: int
    iters: int
    n_cblocks: int
    n_itiles: int
    total_tiles: int

    @property
    def programs(self) -> int:
        return self.n_cblocks * _cdiv(self.total_tiles, self.iters)

    def full_tiles(self, view: ChannelView) -> bool:
        """Whether every tile lies wholly inside ``view`` (it needs no mask)."""
        return view.channels % self.block_c == 0 and view.inner % self.block_i == 0


def tiles_along_channels(view: ChannelView) -> bool:
    """Whether tiles run along the channels (their stride is the smaller: channels_last, tokens) rather than along
    the inner positions (NCHW)."""
    return view.inner == 1 or (view.channels > 1 and view.stride_channel < view.stride_inner)


def launch_config(
    view: ChannelView, itemsize: int, target_programs: int, fused: bool = False, min_programs: int | None = None
) -> LaunchConfig:
    """Tiles laid along the axis with the smaller stride (the contiguous one when there is one), of
    ``_tile_constants``' bytes. Counting alone (not ``fused``), tiles along the channels take ``CHANNEL_TILE_BYTES``,
    and NCHW tiles may be fitted to the rows (``INNER_BLOCK_FIT``). The tiles are spread over about
    ``target_programs`` programs; with ``min_programs``, over fewer where that gives each program at least
    ``MIN_TILES_PER_PROGRAM`` tiles, but not fewer than ``min_programs``.

    Example::

        >>> launch_config(ChannelView(32, 64, 3136, 64 * 3136, 3136, 1), 4, 2112)  # NCHW float32
        LaunchConfig(block_c=1, block_i=2048, iters=2, n_cblocks=64, n_itiles=2, total_tiles=64)
        >>> launch_config(ChannelView(32, 64, 3136, 64 * 3136, 3136, 1), 4, 2112, min_programs=264)
        LaunchConfig(block_c=1, block_i=2048, iters=8, n_cblocks=64, n_itiles=2, total_tiles=64)
    """
    along_channels = tiles_along_channels(view)
    tile = _tile_constants(along_channels, fused).tile_bytes // itemsize
    if along_channels:
        block_c = _channel_block(view.channels, itemsize)
        block_i = _pow2_at_most(view.inner, tile // block_c)
    else:
        block_i = _inner_block(view, itemsize, tile, not fused)
        block_c = _pow2_at_most(view.channels, tile // block_i)
    n_cblocks = _cdiv(view.channels, block_c)
    n_itiles = _cdiv(view.inner, block_i)
    total_tiles = view.outer * n_itiles
    work = n_cblocks * total_tiles
    iters = _cdiv(work, target_programs)
    if min_programs:
        iters = max(iters, min(MIN_TILES_PER_PROGRAM, _cdiv(work, min_programs)))
    iters = max(1, min(MAX_ITERS, iters))
    return LaunchConfig(block_c, block_i, iters, n_cblocks, n_itiles, total_tiles)


def _inner_block(view: ChannelView, itemsize: int, tile: int, fit: bool) -> int:
    """Positions per tile along the inner positions: the widest power of two up to the tile, or with ``fit`` and
    ``INNER_BLOCK_FIT``, where that leaves a row's last tile partial, the largest power of two dividing the row, if it
    is at least ``MIN_INNER_ROW_BYTES`` long and the channels fill whole tiles of ``tile`` values with it.

    Example (NCHW float32, 64 channels of 56x56: 3136 = 64 x 49 positions)::

        >>> _inner_block(ChannelView(32, 64, 3136, 64 * 3136, 3136, 1), 4, 2048, True)  # with INNER_BLOCK_FIT: 64
        2048
    """
    block = _pow2_at_most(view.inner, tile)
    if fit and INNER_BLOCK_FIT and view.inner % block:
        divisor = view.inner & -view.inner
        if divisor * itemsize >= MIN_INNER_ROW_BYTES and view.channels % (tile // divisor) == 0:
            return divisor
    return block


def _channel_block(channels: int, itemsize: int) -> int:
    """Channels per tile along the channels: the widest power of two up to ``ROW_BYTES`` of a row, or with
    ``CHANNEL_BLOCK_FIT`` the one that pads the channels least (the wider of equals), down to ``MIN_ROW_BYTES``.

    Example::

        >>> _channel_block(96, 2), _channel_block(384, 2), _channel_block(64, 4)  # with CHANNEL_BLOCK_FIT
        (32, 128, 64)
    """
    block = best = _pow2_at_most(channels, ROW_BYTES // itemsize)
    while CHANNEL_BLOCK_FIT and block // 2 * itemsize >= MIN_ROW_BYTES:
        block //= 2
        if _cdiv(channels, block) * block < _cdiv(channels, best) * best:
            best = block
    return best


def channel_rows_share_lines(view: ChannelView, itemsize: int) -> bool:
    """Whether the tiles of ``view`` run along the channels in several blocks whose rows are narrower than a cache line
    (``LINE_BYTES``), so that programs of different blocks read and write the same lines (see LINE_BYTES).

    Example (MobileNet-V2 block1, channels_last: 96 channels, blocks of 32)::

        >>> channel_rows_share_lines(ChannelView(8, 96, 12544, 96 * 12544, 1, 96), 2)  # float16: 64-byte rows
        True
        >>> channel_rows_share_lines(ChannelView(8, 96, 12544, 96 * 12544, 1, 96), 4)  # float32: 128 bytes
        False
    """
    if not tiles_along_channels(view):
        return False
    block = _channel_block(view.channels, itemsize)
    return block < view.channels and block * itemsize < LINE_BYTES


def _unroll(along_channels: bool, act: int) -> int:
    if not along_channels:
        return INNER_TILE_UNROLL
    gelu = act in (ACTIVATIONS["gelu_none"], ACTIVATIONS["gelu_tanh"])
    return CHANNEL_TILE_GELU_UNROLL if gelu else CHANNEL_TILE_UNROLL


def _alignment(stride: int) -> int:
    """The largest power of two up to 16 that divides ``stride`` (0 divides by anything)."""
    return 16 if stride % 16 == 0 else stride & -stride


def _tile_alignment(view: ChannelView, block_i: int) -> int:
    """What divides every tile's offset, ``outer * stride_outer + itile * block_i * stride_inner``."""
    return min(_alignment(view.stride_outer), _alignment(block_i * view.stride_inner))


@dataclass(eq=False)
class StaticLaunch:
    """What every launch with the same shapes, strides and settings shares: grid size, integer arguments,
    compile-time constants and warps, and the kernels compiled for them (``_launch_compiled``)."""

    programs: int
    ints: tuple[int, ...]
    constexprs: dict[str, object]
    num_warps: int
    # Keyed by what Triton also specialises a kernel on: the tensors' dtypes and 16-byte alignment.
    compiled: dict[tuple, tuple[Any, tuple]] = field(default_factory=dict)


class KernelLaunch(NamedTuple):
    """Everything one launch passes to the kernel: grid size, runtime arguments and compile-time constants, and the
    kernels compiled for them (``StaticLaunch.compiled``). A named tuple: made on every count, it costs a fifth of
    a frozen dataclass (0.3 us, not 1.4)."""

    programs: int
    args: tuple
    constexprs: dict[str, object]
    num_warps: int
    compiled: dict[tuple, tuple[Any, tuple]]


def kernel_launch(
    job: CountJob, act: int = 0, params: tuple[float, float] = (0.0, 0.0), *, compiled: bool | None = None
) -> KernelLaunch:
    """The launch for ``job``: count, and when ``act`` is non-zero also write the activation into ``job.y``.
    ``compiled``: for the compiled kernel rather than the interpreter (default: as ``run_kernel`` will run it)."""
    x, kt = job.x, job.kernel_thresholds
    if compiled is None:
        compiled = not _interpreted(x)
    # 16-bit values are compared in their own format when counting alone, or fused with relu or hardtanh, which
    # then clamp in that format too, or with leaky_relu, computed in float32 (sm_90 loop instructions, NCHW:
    # float16 425 -> 392, bfloat16 454 -> 387, 80 registers -> 53 and 68). Not with GELU: its loops took 16-18
    # registers more (three programs an SM instead of four) for 2% fewer instructions. bfloat16 only when compiled:
    # the interpreter holds bfloat16 as raw bits, which compare as integers.
    bf16 = x.dtype == torch.bfloat16
    cmp16 = (
        HALF_COMPARES
        and act in (0, ACTIVATIONS["relu"], ACTIVATIONS["hardtanh"], ACTIVATIONS["leaky_relu"])
        and (x.dtype == torch.float16 or (bf16 and compiled))
    )
    act16 = cmp16 and act in (ACTIVATIONS["relu"], ACTIVATIONS["hardtanh"])
    greater, tie = half_thresholds(kt, x.dtype) if cmp16 else (kt.greater, kt.tie)
    values = half_clamp_params(*params, x.dtype) if act16 else params
    consts = _constants(greater, tie, values, kt.compute_dtype, str(x.device))
    if act:
        assert isinstance(job, FusedJob)
        y, y_view = job.y, job.y_view
    else:
        y, y_view = x, job.view  # never written: ACT == 0 compiles the store away
    static = _static_launch(
        job.view, y_view, x.element_size(), x.device, act, kt.num_states, job.ignore_ties, kt.compute_dtype,
        bf16, cmp16, act16, bf16 and not compiled,
    )  # fmt: skip
    args = (x, y, job.counts, consts, *static.ints)
    return KernelLaunch(static.programs, args, static.constexprs, static.num_warps, static.compiled)


@functools.lru_cache(maxsize=256)
def _static_launch(
    view: ChannelView,
    y_view: ChannelView,
    itemsize: int,
    device: torch.device,
    act: int,
    num_states: int,
    ignore_ties: bool,
    compute_dtype: torch.dtype,
    bf16: bool,
    cmp16: bool,
    act16: bool,
    bf16_by_hand: bool,
) -> StaticLaunch:
    """What a launch takes besides its tensors: grid size, integer arguments, compile-time constants and warps.
    Remembered per shape and setting, since a model counts the same activation shapes batch after batch (the
    constants dict is shared: callers copy it, never change it)."""
    along_channels = tiles_along_channels(view)
    # Fused kernels keep the widest NCHW tiles: fitted, their masked loops took 13-32 more registers (float16 relu
    # 59 -> 72, hardtanh 64 -> 91).
    fused = act != 0
    narrow = fused and along_channels and _channel_block(view.channels, itemsize) <= FUSED_NARROW_CHANNELS
    target = _target_programs(device, along_channels, fused, narrow)
    cfg = launch_config(view, itemsize, target, fused, _min_programs(device))
    ints = (
        view.channels, view.inner, cfg.n_itiles, cfg.total_tiles, cfg.iters, cfg.n_cblocks,
        view.stride_outer, view.stride_channel, view.stride_inner,
        y_view.stride_outer, y_view.stride_channel, y_view.stride_inner,
    )  # fmt: skip
    # Tiles one position wide have nothing to vectorise along the inner positions, and a hint on their [BLOCK_C, 1]
    # inner offsets fails to compile for (1, C) rows (Triton 3.6 and 3.8: an AxisInfo assertion): none there.
    inner_alignment = _alignment if cfg.block_i > 1 else lambda stride: 1
    alignments = (
        min(_alignment(view.channels), cfg.block_c),  # constancy hints cannot exceed the block
        min(_alignment(view.inner), cfg.block_i),
        _tile_alignment(view, cfg.block_i),
        _alignment(view.stride_channel),
        inner_alignment(view.stride_inner),
        _tile_alignment(y_view, cfg.block_i),
        _alignment(y_view.stride_channel),
        inner_alignment(y_view.stride_inner),
    )
    constexprs = dict(
        K=num_states,
        IGNORE_TIES=ignore_ties,
        ACT=act,
        # relu/hardtanh as torch computes them on the tensor's device: its CUDA kernels turn a value at the lower
        # bound into the bound (relu(-0.0) == +0.0), its CPU kernels keep it (-0.0); NaN propagates on both.
        CLAMP_TO_BOUND=device.type == "cuda",
        COMPUTE=tl.float64 if compute_dtype == torch.float64 else tl.float32,
        BF16=bf16,
        BF16_BY_HAND=bf16_by_hand,
        CMP16=cmp16,
        ACT16=act16,
        ACC=tl.int32 if num_states <= 4 else tl.int64,
        BLOCK_C=cfg.block_c,
        BLOCK_I=cfg.block_i,
        UNROLL=_unroll(along_channels, act),
        STAGES=CHANNEL_TILE_STAGES if along_channels else INNER_TILE_STAGES,
        # Counting only: fused kernels keep their masks (unmasked, they took up to 16 more registers: fused bfloat16
        # relu channels_last 62 -> 66, leaky_relu 59 -> 75, one program less an SM).
        FULL_TILES=UNMASKED_FULL_TILES and act == 0 and cfg.full_tiles(view),
        # Divisibility hints (see the kernel), as separate scalars: Triton 3.6 takes only a constexpr, not an
        # element of a constexpr tuple, as a hint's value.
        **dict(zip(ALIGN_NAMES, alignments, strict=True)),
    )
    warps = _tile_constants(along_channels, fused, narrow).warps
    if along_channels and not fused:  # as measured: counting only (fused channel tiles keep theirs, untimed)
        warps = _few_tiles_warps(cfg.iters, warps)
    return StaticLaunch(cfg.programs, ints, constexprs, warps)


def _few_tiles_warps(tiles_per_program: int, warps: int) -> int:
    """The warps of a program counting ``tiles_per_program`` tiles along the channels (``FEW_TILES_WARPS``), at most
    ``warps``."""
    for few, few_warps in FEW_TILES_WARPS:
        if tiles_per_program < few:
            return min(warps, few_warps)
    return warps


def _interpreted(x: torch.Tensor) -> bool:
    """Whether ``run_kernel`` runs the kernel for ``x`` in the interpreter."""
    return bool(triton.knobs.runtime.interpret) or x.device.type != "cuda"


def run_kernel(job: CountJob, act: int = 0, params: tuple[float, float] = (0.0, 0.0)) -> None:
    """Launch the kernel for ``job``: compiled for CUDA tensors, interpreted under ``TRITON_INTERPRET=1``."""
    interpreted = _interpreted(job.x)
    launch = kernel_launch(job, act, params, compiled=not interpreted)
    if interpreted:
        # Under TRITON_INTERPRET=1 everything is interpreted, as for any Triton kernel (CUDA tensors included).
        interpreted_kernel()[(launch.programs,)](*launch.args, **launch.constexprs)
    else:
        with on_device(job.x.device):
            _launch_compiled(launch, job.x.device)


def _launch_compiled(launch: KernelLaunch, device: torch.device) -> None:
    """Launch on a GPU. The first launch of each setting goes through ``JITFunction.run``, which compiles the kernel
    (or finds it compiled) and returns it; later ones with the same settings call that kernel's launcher with the
    same arguments as ``JITFunction.run`` would (Triton 3.6 and 3.8), skipping its binding and specialisation of
    every argument. On an H200 (benchmarks/bench_triton_host.py, session 13) a count of ResNet-18's layer4 in
    float16 took 64-98 us of host time through ``JITFunction.run`` and 26-32 us directly (the cuda backend: 24 us,
    ``x.sum()``: 13-18 us); the fused relu 79-109 us and 35-54 us.

    The settings are the ``StaticLaunch`` (shapes, strides, constants, warps: the integer arguments, so how Triton
    specialises them, follow from these), what Triton specialises the tensors on (dtype and 16-byte alignment), and
    its debug switch. Launch hooks (Triton's profilers) take the ``JITFunction.run`` path every time."""
    tensors = launch.args[:4]
    debug = triton.knobs.runtime.debug  # compiled in (device-side asserts): set by TRITON_DEBUG or by hand
    key = (debug, tensors[0].dtype, tensors[1].dtype, *(t.data_ptr() % 16 == 0 for t in tensors))
    use_direct = DIRECT_LAUNCH and _no_launch_hooks()
    direct = launch.compiled.get(key) if use_direct else None
    if direct is None:
        constexpr_args = _constexpr_args(launch) if use_direct else ()
        grid = (launch.programs,)
        kernel = compiled_kernel()[grid](*launch.args, **launch.constexprs, num_warps=launch.num_warps)
        if use_direct and kernel is not None:
            kernel = kernel.result() if hasattr(kernel, "result") else kernel  # an asynchronous compile's future
            launch.compiled[key] = (kernel, constexpr_args)
        return
    kernel, constexpr_args = direct
    stream = driver.active.get_current_stream(device.index)
    kernel.run(
        launch.programs, 1, 1, stream, kernel.function, kernel.packed_metadata, None, None, None,
        *launch.args, *constexpr_args,
    )  # fmt: skip


def _no_launch_hooks() -> bool:
    """Whether no launch hook is set. Triton 3.6 and 3.8 hold them as chains (``HookChain``), empty unless a
    profiler adds one; the launcher calls a chain given, so an empty one does what none does."""
    runtime = triton.knobs.runtime
    return all(
        hook is None or not getattr(hook, "calls", True)
        for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook)
    )


def _constexpr_args(launch: KernelLaunch) -> tuple:
    """The compile-time constants in the kernel's parameter order, which follow its runtime arguments."""
    names = compiled_kernel().arg_names
    runtime, constants = names[: len(launch.args)], names[len(launch.args) :]
    if set(runtime) & set(launch.constexprs) or set(constants) != set(launch.constexprs):
        raise RuntimeError(f"the kernel's parameters {names} do not match its launch's constants")
    return tuple(launch.constexprs[name] for name in constants)
