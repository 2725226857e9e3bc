"""The specification: plain PyTorch counting, in float64, that every other backend must match exactly."""

from __future__ import annotations

import torch

_CHUNK = 1 << 24


def count_states_reference(
    x: torch.Tensor, thresholds: tuple[float, ...], channel_dim: int, ignore_ties: bool
) -> torch.Tensor:
    """Int64 counts ``(C, K)``: value v is in state ``#{t : v > t}``; NaN in none; ties in none if asked.

    Works in column chunks so the float64 temporaries stay small for tensors of any size.
    """
    channels = x.shape[channel_dim]
    k = len(thresholds) + 1
    counts = torch.zeros(channels, k, dtype=torch.int64, device=x.device)
    flat = x.movedim(channel_dim, 0).reshape(channels, -1)
    for start in range(0, flat.shape[1], _CHUNK):
        v = flat[:, start : start + _CHUNK].to(torch.float64)
        valid = ~torch.isnan(v)
        state = torch.zeros_like(v, dtype=torch.int64)
        for t in thresholds:
            state += v > t
            if ignore_ties:
                valid &= v != t
        for s in range(k):
            counts[:, s] += ((state == s) & valid).sum(dim=1)
    return counts
