"""Entropy of activation-state counts (METHOD.md section 2), computed in float64 from exact integer counts."""

from __future__ import annotations

import math

import torch

LAYER_REDUCTIONS = ("mean", "sum", "nonconstant_mean")


def _check_counts(counts: torch.Tensor) -> None:
    if not isinstance(counts, torch.Tensor) or counts.dim() != 2:
        raise ValueError(f"counts must be a 2-D (C, K) tensor, got {getattr(counts, 'shape', type(counts))}")
    if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool:
        raise TypeError(f"counts must be an integer tensor, got {counts.dtype}")


def neuron_entropy(counts: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of each neuron's state distribution: float64 tensor of shape (C,).

    ``H[c] = -sum_k p log2 p`` with ``p = n[c, k] / N[c]`` and ``0 log 0 = 0``; a neuron that saw no sample
    has entropy 0.

    Example::

        >>> neuron_entropy(torch.tensor([[2, 2], [4, 0]]))
        tensor([1., 0.], dtype=torch.float64)
    """
    _check_counts(counts)
    n = counts.to(torch.float64)
    total = n.sum(dim=1, keepdim=True)
    p = n / total.clamp_min(1.0)
    # "+ 0.0" turns the -0.0 of a constant neuron into 0.0
    return -torch.xlogy(p, p).sum(dim=1) / math.log(2.0) + 0.0


def layer_entropy(counts: torch.Tensor, reduction: str = "mean") -> float:
    """One layer's entropy from its (C, K) counts.

    ``reduction``: ``"mean"`` over neurons (default), ``"sum"``, or ``"nonconstant_mean"`` (mean over neurons
    with nonzero entropy, 0 when there are none: EGP's and NEPENTHE's neuron selection).
    """
    return reduce_entropy(neuron_entropy(counts), reduction)


def reduce_entropy(h: torch.Tensor, reduction: str = "mean") -> float:
    """Reduce neuron entropies ``h`` (C,) to one layer value, as :func:`layer_entropy` does with counts."""
    if reduction not in LAYER_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LAYER_REDUCTIONS}, got {reduction!r}")
    if h.numel() == 0:
        return 0.0
    if reduction == "sum":
        return float(h.sum())
    if reduction == "nonconstant_mean":
        nonzero = h[h > 0]
        return float(nonzero.mean()) if nonzero.numel() else 0.0
    return float(h.mean())


def seen_states(counts: torch.Tensor) -> torch.Tensor:
    """How many distinct states each neuron was seen in: int64 tensor of shape (C,)."""
    _check_counts(counts)
    return (counts > 0).sum(dim=1)


def is_linearizable(counts: torch.Tensor) -> bool:
    """True when every neuron was seen in exactly one state (zero entropy from integer counts)."""
    return bool((seen_states(counts) == 1).all()) and counts.shape[0] > 0


def dominant_state(counts: torch.Tensor) -> torch.Tensor:
    """The state each neuron was seen in most often: int64 tensor of shape (C,)."""
    _check_counts(counts)
    return counts.argmax(dim=1)
