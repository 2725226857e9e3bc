"""Thresholds as the kernels compare them, so that every backend counts exactly as the float64 reference.

The specification compares each value with each threshold as real numbers. Kernels read float16, bfloat16
and float32 inputs as float32 (exact), so a threshold that float32 cannot hold is replaced by the largest
float32 below it: for a float32 value v, ``v > t`` exactly when ``v > round_down(t)``. Such a threshold can
never tie with a value, so its tie value is NaN (which equals nothing).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

MAX_THRESHOLDS = 7


@dataclass(frozen=True)
class KernelThresholds:
    """``greater[k]``: compare ``v > greater[k]``; ``tie[k]``: value that ties with threshold k (NaN if none)."""

    greater: tuple[float, ...]
    tie: tuple[float, ...]
    compute_dtype: torch.dtype

    @property
    def num_states(self) -> int:
        return len(self.greater) + 1


@functools.lru_cache(maxsize=256)  # the same few threshold sets come back on every hooked call
def kernel_thresholds(thresholds: tuple[float, ...], dtype: torch.dtype) -> KernelThresholds:
    """Thresholds rounded for a kernel that reads ``dtype`` (float64 stays float64, the rest read float32)."""
    if dtype == torch.float64:
        return KernelThresholds(tuple(thresholds), tuple(thresholds), torch.float64)
    greater, tie = [], []
    with np.errstate(over="ignore"):
        for t in thresholds:
            t32 = np.float32(t)
            if float(t32) == t:
                greater.append(float(t32))
                tie.append(float(t32))
            else:
                below = t32 if float(t32) < t else np.nextafter(t32, np.float32(-np.inf))
                greater.append(float(below))
                tie.append(math.nan)
    return KernelThresholds(tuple(greater), tuple(tie), torch.float32)


@functools.lru_cache(maxsize=256)
def half_thresholds(kt: KernelThresholds, dtype: torch.dtype) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``kt``'s (greater, tie) values for comparing float16 or bfloat16 values in their own format rather than in
    float32: each greater value rounded down to ``dtype`` (for such a value v, ``v > g`` exactly when
    ``v > round_down(g)``; past the format's largest finite value that is the largest finite value, so only +inf
    passes), each tie value kept where ``dtype`` holds it exactly, else NaN.

    Example::

        >>> half_thresholds(kernel_thresholds((0.0, 0.1, 1e5), torch.float16), torch.float16)
        ((0.0, 0.0999755859375, 65504.0), (0.0, nan, nan))
    """
    greater = tuple(_round_down(g, dtype) for g in kt.greater)
    return greater, tuple(_held_or_nan(t, dtype) for t in kt.tie)


@functools.lru_cache(maxsize=64)
def half_clamp_params(lo: float, hi: float, dtype: torch.dtype) -> tuple[float, float, float, float, float]:
    """Bounds ``lo < hi`` of hardtanh (relu: 0, and an unused ``hi``) for clamping float16 or bfloat16 values in
    their own format exactly as torch does in float32 math: ``(lo_cmp, hi_cmp, lo_out, hi_out, lo_tie)``.

    torch compares with the bounds as float32 values, L and H. For a 16-bit value v: ``v <= L`` exactly when
    ``v <= lo_cmp`` and ``v > H`` exactly when ``v > hi_cmp`` (both rounded down to ``dtype``, as in
    ``half_thresholds``); ``v < L`` exactly when also ``v != lo_tie`` (L where ``dtype`` holds it, else NaN). A
    clamped value becomes ``lo_out`` or ``hi_out``: L or H rounded to nearest, as torch stores them.

    Example::

        >>> half_clamp_params(-0.3, 2.7, torch.float16)
        (-0.300048828125, 2.69921875, -0.300048828125, 2.69921875, nan)
    """
    lo32, hi32 = (float(np.float32(b)) for b in (lo, hi))
    lo_out, hi_out = (_nearest(b, dtype) for b in (lo32, hi32))
    return _round_down(lo32, dtype), _round_down(hi32, dtype), lo_out, hi_out, _held_or_nan(lo32, dtype)


def _nearest(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to the nearest ``dtype`` value (a 16-bit float format)."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


def _held_or_nan(value: float, dtype: torch.dtype) -> float:
    """``value`` where ``dtype`` holds it exactly, else NaN (which equals nothing: a tie no value can meet)."""
    return value if _nearest(value, dtype) == value else math.nan


def _round_down(value: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value (a 16-bit float format) not above ``value``."""
    nearest = torch.tensor(value, dtype=torch.float64).to(dtype)
    if float(nearest) <= value:
        return float(nearest)
    # One step towards -inf in the bits: +0 -> the negative denormal next to it, positives shrink, negatives grow.
    bits = int(nearest.view(torch.int16)) & 0xFFFF
    bits = 0x8001 if bits == 0 else bits - 1 if bits < 0x8000 else bits + 1
    return float(torch.tensor(bits - (bits >> 15 << 16), dtype=torch.int16).view(dtype))
