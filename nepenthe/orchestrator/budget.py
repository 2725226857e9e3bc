"""The entropy-guided pruning budget of one iteration (METHOD.md section 3).

Irrelevance ``I_l = H_l * mean|w|`` (nonzero weights only), relevance ``R_l = sum_j I_j / I_l``, share
``softmax(R)`` and budget ``B = zeta * sum_l ||w_l||_0``; a layer whose share exceeds what it has left gives
everything it has, leaves the pool, and the rest of the budget is shared again among the others. Low-entropy,
small-weight layers are the least relevant to keep non-linear, so they get the largest share: the method pushes
them towards zero entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..entropy import LAYER_REDUCTIONS


@dataclass(frozen=True)
class LayerBudget:
    """What the budget gave one prunable layer in one iteration."""

    name: str
    """The conv/linear module name."""
    irrelevance: float
    relevance: float
    share: float
    """Share of the budget in the pass of the cap loop where the layer was settled."""
    alive: int
    """Nonzero weights before pruning."""
    prune: int
    """Weights to remove."""
    capped: bool


def mean_nonzero_magnitude(weight: torch.Tensor) -> float:
    """Mean ``|w|`` over the nonzero entries of ``weight``; 0.0 when every entry is zero."""
    w = weight.detach().abs()
    alive = int((w != 0).sum())
    return float(w.sum(dtype=torch.float64)) / alive if alive else 0.0


def neuron_magnitudes(weight: torch.Tensor) -> torch.Tensor:
    """Per output channel (dim 0) mean ``|w|`` over nonzero entries, float64 of shape ``(C_out,)``; 0 where none."""
    w = weight.detach().abs().reshape(weight.shape[0], -1).to(torch.float64)
    alive = (w != 0).sum(dim=1)
    return torch.where(alive > 0, w.sum(dim=1) / alive.clamp_min(1), torch.zeros_like(w[:, 0]))


def layer_irrelevance(layer_entropy: float, weight: torch.Tensor) -> float:
    """EGP's irrelevance of a layer: its entropy times its mean nonzero weight magnitude.

    Example::

        >>> layer_irrelevance(0.5, torch.tensor([[0.0, 2.0], [-4.0, 0.0]]))
        1.5
    """
    return float(layer_entropy) * mean_nonzero_magnitude(weight)


def neuron_irrelevance(neuron_entropy: torch.Tensor, weight: torch.Tensor, reduction: str = "mean") -> float:
    """NEPENTHE's refinement: each neuron's entropy times the mean nonzero magnitude of its own weights, reduced
    over the layer's neurons like the layer entropy (``mean``, ``sum``, or ``nonconstant_mean`` over neurons with
    nonzero entropy). Neuron c is output channel c of ``weight`` (dim 0 of a conv or linear weight).

    Example::

        >>> neuron_irrelevance(torch.tensor([1.0, 0.0]), torch.tensor([[2.0, 0.0], [5.0, 5.0]]))
        1.0
    """
    if reduction not in LAYER_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LAYER_REDUCTIONS}, got {reduction!r}")
    h = neuron_entropy.detach().to(torch.float64).reshape(-1)
    if h.numel() != weight.shape[0]:
        raise ValueError(f"neuron_entropy has {h.numel()} neurons but the weight has {weight.shape[0]} output channels")
    per_neuron = h * neuron_magnitudes(weight)
    if reduction == "sum":
        return float(per_neuron.sum())
    if reduction == "nonconstant_mean":
        keep = h > 0
        return float(per_neuron[keep].mean()) if bool(keep.any()) else 0.0
    return float(per_neuron.mean()) if per_neuron.numel() else 0.0


def softmax(values: list[float]) -> list[float]:
    """Softmax with the maximum subtracted first; infinite entries share everything equally between them."""
    if not values:
        return []
    infinite = [math.isinf(v) and v > 0 for v in values]
    if any(infinite):
        count = sum(infinite)
        return [1.0 / count if inf else 0.0 for inf in infinite]
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def allocate_budget(irrelevance: dict[str, float], alive: dict[str, int], zeta: float) -> dict[str, LayerBudget]:
    """How many weights each layer gives up this iteration.

    ``irrelevance``: name -> ``I_l``; ``alive``: name -> nonzero weights ``||w_l||_0``. Layers with no weight
    left or with ``I_l <= 0`` (zero entropy: linearizable, or no magnitude) are left out of the pool and get 0.
    The budget is ``floor``-ed per layer, so the total never exceeds ``zeta * sum ||w||_0``.

    Example::

        >>> b = allocate_budget({"a": 1.0, "b": 2.0}, {"a": 100, "b": 100}, zeta=0.5)
        >>> b["a"].prune, b["b"].prune
        (81, 18)
    """
    if not 0.0 < zeta <= 1.0:
        raise ValueError(f"zeta must be in (0, 1], got {zeta}")
    missing = sorted(set(irrelevance) ^ set(alive))
    if missing:
        raise ValueError(f"irrelevance and alive must name the same layers; mismatched: {missing}")
    for name, value in irrelevance.items():
        if math.isnan(value) or value < 0:
            raise ValueError(f"irrelevance of {name!r} must be a non-negative number, got {value}")
    pool = [n for n in irrelevance if alive[n] > 0 and irrelevance[n] > 0 and math.isfinite(irrelevance[n])]
    total_irrelevance = sum(irrelevance[n] for n in pool)
    relevance = {n: total_irrelevance / irrelevance[n] for n in pool}
    result = {
        n: LayerBudget(n, irrelevance[n], relevance.get(n, 0.0), 0.0, int(alive[n]), 0, False) for n in irrelevance
    }
    budget = zeta * sum(alive[n] for n in pool)
    remaining = list(pool)
    while remaining:
        shares = dict(zip(remaining, softmax([relevance[n] for n in remaining]), strict=True))
        capped = [n for n in remaining if budget * shares[n] >= alive[n]]
        if not capped:
            for n in remaining:
                take = min(alive[n], math.floor(budget * shares[n] + 1e-9))
                result[n] = LayerBudget(n, irrelevance[n], relevance[n], shares[n], alive[n], take, False)
            break
        for n in capped:
            result[n] = LayerBudget(n, irrelevance[n], relevance[n], shares[n], alive[n], alive[n], True)
            budget -= alive[n]
            remaining.remove(n)
    return result
