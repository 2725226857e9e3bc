"""Values and thresholds that the count tests share: denormals per dtype, thresholds that 16-bit formats cannot
hold, lie beyond or hold with neighbours, and every 16-bit value next to them; values far from zero."""

from __future__ import annotations

import math

import torch

DENORMAL = {torch.float32: 2.0**-140, torch.float16: 2.0**-20, torch.bfloat16: 2.0**-130, torch.float64: 2.0**-1070}

WORD_THRESHOLDS = [
    (0.1,),
    (-0.3,),
    (6.0,),
    (-0.0,),
    (1e-9,),
    (-1e-9,),
    (70000.0,),
    (-70000.0,),
    (3.0e38,),
    (0.1, 6.0),
    (-0.3, 0.1),
    (-1e-9, 1e-9),
    (-70000.0, 70000.0),
    (-3.0e38, -1.0),
]


def values_around(thresholds: list[float], dtype: torch.dtype) -> torch.Tensor:
    """Every 16-bit value within two steps of each threshold's nearest ``dtype`` value (bit patterns that are NaN
    dropped), and +-0, +-inf, the smallest denormals and the largest finite values."""
    bits = torch.tensor(thresholds, dtype=torch.float32).to(dtype).view(torch.int16).to(torch.int32)
    near = (bits[:, None] + torch.arange(-2, 3)).flatten()
    near = ((near + 32768) % 65536 - 32768).to(torch.int16).view(dtype)
    info = torch.finfo(dtype)
    special = torch.tensor(
        [0.0, -0.0, math.inf, -math.inf, DENORMAL[dtype], -DENORMAL[dtype], info.max, -info.max], dtype=dtype
    )
    values = torch.cat([near, special])
    return values[~values.isnan()]


def far_from_zero(dtype: torch.dtype) -> torch.Tensor:
    """Values far from zero, both signs, up to the dtype's largest (float32 overflows for the cube of some), then
    -13, -10, +inf and -inf last."""
    big = torch.finfo(dtype).max
    far = [20.0, 50.0, 87.5, 88.5, 100.0, 1e4, 6e4, 1e5, 1e20, 1e38, 3e38, 1e300]
    magnitudes = sorted({min(v, big) for v in far} | {big})
    values = [-v for v in magnitudes] + magnitudes + [-13.0, -10.0, math.inf, -math.inf]
    return torch.tensor(values, dtype=torch.float64).to(dtype)
