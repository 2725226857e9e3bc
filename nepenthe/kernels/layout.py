"""Read any strided tensor as ``(outer, C, inner)`` with element strides, so kernels never need a copy.

Counting pools every non-channel position, so the order of the non-channel dimensions does not matter: they
are sorted by stride and merged wherever memory allows. Contiguous NCHW becomes ``(N, C, H*W)`` with inner
stride 1; channels_last becomes ``(1, C, N*H*W)`` with channel stride 1 and inner stride C. Only layouts that
cannot be described by two non-channel strides (rare views) need a copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChannelView:
    """Shape and element strides of a tensor seen as ``(outer, channels, inner)``."""

    outer: int
    channels: int
    inner: int
    stride_outer: int
    stride_channel: int
    stride_inner: int

    @property
    def numel(self) -> int:
        return self.outer * self.channels * self.inner

    @functools.cached_property
    def args(self) -> tuple[int, int, int, int, int, int]:
        """The six integers the extensions take: (outer, C, inner, s_outer, s_channel, s_inner)."""
        return (self.outer, self.channels, self.inner, self.stride_outer, self.stride_channel, self.stride_inner)


def channel_view(x: torch.Tensor, channel_dim: int) -> ChannelView | None:
    """The ``(outer, C, inner)`` view of ``x`` around ``channel_dim``, or None if its layout needs a copy."""
    return _view_of(tuple(x.shape), x.stride(), channel_dim % x.dim())


@functools.lru_cache(maxsize=4096)  # a hooked model counts the same few shapes on every batch
def _view_of(shape: tuple[int, ...], strides: tuple[int, ...], cd: int) -> ChannelView | None:
    dims = [(shape[d], strides[d]) for d in range(len(shape)) if d != cd and shape[d] != 1]
    dims.sort(key=lambda sd: sd[1], reverse=True)
    merged: list[tuple[int, int]] = []
    for size, stride in dims:
        if merged and merged[-1][1] == size * stride:
            merged[-1] = (merged[-1][0] * size, stride)
        else:
            merged.append((size, stride))
    if len(merged) > 2:
        return None
    while len(merged) < 2:
        merged.insert(0, (1, 0))
    (outer, s_outer), (inner, s_inner) = merged
    return ChannelView(outer, shape[cd], inner, s_outer, strides[cd], s_inner)


def readable_view(x: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, ChannelView]:
    """``x`` (or a contiguous copy, only when its layout demands one) with its channel view."""
    view = channel_view(x, channel_dim)
    if view is None:
        x = x.contiguous()
        view = channel_view(x, channel_dim)
        assert view is not None
    return x, view
