"""What the dispatcher hands a backend: one fully checked counting (or fused) job.

Backends receive tensors that passed validation, a :class:`ChannelView` giving element strides, and
thresholds already rounded for the kernel's compute precision. They add into ``counts`` in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .layout import ChannelView
from .thresholds import KernelThresholds

FUSED_KINDS = ("relu", "hardtanh", "leaky_relu", "gelu")


@dataclass(slots=True)  # built on every call: plain slots construct five times faster than frozen
class CountJob:
    """Count the states of ``x`` (read through ``view``) into ``counts`` (int64, contiguous, (C, K))."""

    x: torch.Tensor
    channel_dim: int
    view: ChannelView
    thresholds: tuple[float, ...]
    kernel_thresholds: KernelThresholds
    ignore_ties: bool
    counts: torch.Tensor


@dataclass(slots=True)  # built on every call: plain slots construct five times faster than frozen
class FusedJob(CountJob):
    """Also write ``activation(x)`` into ``y`` (read through ``y_view``) in the same pass.

    ``kind`` is one of FUSED_KINDS; ``params`` holds ``min_val``/``max_val`` (hardtanh), ``negative_slope``
    (leaky_relu) or ``approximate`` ("none" or "tanh", gelu).
    """

    y: torch.Tensor = field(default=None)  # type: ignore[assignment]
    y_view: ChannelView = field(default=None)  # type: ignore[assignment]
    kind: str = "relu"
    params: dict[str, object] = field(default_factory=dict)
