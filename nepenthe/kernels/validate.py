"""Argument checks for the counting operations, run before any kernel so errors name the argument."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from .thresholds import MAX_THRESHOLDS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_input(x: object, channel_dim: int) -> int:
    """Check ``x`` and return ``channel_dim`` made non-negative."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.is_nested:
        raise TypeError("x must be a dense tensor, got a nested tensor: count each of its tensors (x.unbind())")
    if x.layout != torch.strided:
        raise TypeError(f"x must be a dense (strided) tensor, got layout {x.layout}: call x.to_dense() first")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the channel dimension), got a 0-d tensor")
    if not isinstance(channel_dim, int) or isinstance(channel_dim, bool):
        raise TypeError(f"channel_dim must be an int, got {type(channel_dim).__name__}")
    if not -x.dim() <= channel_dim < x.dim():
        raise ValueError(f"channel_dim={channel_dim} is out of range for x with {x.dim()} dimensions")
    return channel_dim % x.dim()


def check_thresholds(thresholds: Sequence[float] | torch.Tensor) -> tuple[float, ...]:
    """Check ``thresholds`` (finite, strictly increasing, 1 to MAX_THRESHOLDS) and return them as floats."""
    if type(thresholds) is tuple:
        try:
            return _checked_tuple(thresholds)
        except TypeError:  # unhashable items: check them the long way below, which names the problem
            pass
    return _checked(thresholds)


@functools.lru_cache(maxsize=256)  # profilers pass the same tuple on every call
def _checked_tuple(thresholds: tuple) -> tuple[float, ...]:
    return _checked(thresholds)


def _checked(thresholds: Sequence[float] | torch.Tensor) -> tuple[float, ...]:
    if isinstance(thresholds, (str, bytes)):  # iterable, and "06" would read as (0.0, 6.0)
        raise TypeError(f"thresholds must be a sequence of numbers, got {type(thresholds).__name__} {thresholds!r}")
    if isinstance(thresholds, torch.Tensor):
        thresholds = thresholds.tolist()
    try:
        values = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError) as err:
        raise TypeError(f"thresholds must be a sequence of numbers, got {thresholds!r}") from err
    if not 1 <= len(values) <= MAX_THRESHOLDS:
        raise ValueError(f"thresholds must hold 1 to {MAX_THRESHOLDS} values, got {len(values)}")
    if not all(math.isfinite(t) for t in values):
        raise ValueError(f"thresholds must be finite, got {values}")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"thresholds must be strictly increasing, got {values}")
    return values


def check_counts(counts: object, channels: int, states: int, device: torch.device) -> None:
    """Check a caller's ``counts`` accumulator: int64, shape (C, K), contiguous, on x's device."""
    if not isinstance(counts, torch.Tensor):
        raise TypeError(f"counts must be a torch.Tensor, got {type(counts).__name__}")
    if counts.layout != torch.strided:
        raise TypeError(f"counts must be a dense (strided) tensor, got layout {counts.layout}")
    if counts.dtype != torch.int64:
        raise TypeError(f"counts must be int64, got {counts.dtype}")
    if tuple(counts.shape) != (channels, states):
        raise ValueError(f"counts must have shape ({channels}, {states}), got {tuple(counts.shape)}")
    if counts.device != device:
        raise ValueError(f"counts is on {counts.device} but x is on {device}")
    if not counts.is_contiguous():
        raise ValueError("counts must be contiguous")
