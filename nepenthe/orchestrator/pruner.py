"""The pruner: from a profile, decide how many weights each prunable layer gives up, then remove them.

It reads the profile only through its public methods (layer entropy, neuron entropy, layers) and edits the model
only through :class:`PruningMasks`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .budget import LayerBudget, allocate_budget, layer_irrelevance, neuron_irrelevance
from .config import NepentheConfig
from .masks import PruningMasks


def group_by_layer(profile: Any, feeders: dict[tuple[str, int], str | None], skip: set[str]) -> dict[str, list[str]]:
    """Prunable module name -> the activation call sites it feeds (profiled, not in ``skip``), in call order."""
    groups: dict[str, list[str]] = {}
    for name, info in profile.layers.items():
        if name in skip:
            continue
        layer = feeders.get((info.module_name, info.call_index))
        if layer is not None:
            groups.setdefault(layer, []).append(name)
    return groups


def plan_pruning(
    model: nn.Module,
    profile: Any,
    feeders: dict[tuple[str, int], str | None],
    masks: PruningMasks,
    cfg: NepentheConfig,
    skip: set[str] | None = None,
) -> dict[str, LayerBudget]:
    """The budget of every prunable layer for this iteration (METHOD.md section 3).

    ``feeders`` maps each activation call ``(module name, call index)`` to the conv/linear that feeds it (from
    :func:`~nepenthe.orchestrator.prunable.feeding_calls` on the model as profiled); ``skip`` names call sites
    to leave out (those linearized this iteration). A layer feeding several call sites uses their mean entropy.
    """
    groups = group_by_layer(profile, feeders, skip or set())
    layer_h = profile.layer_entropy(cfg.layer_reduction)
    neuron_h = profile.entropy() if cfg.magnitude == "neuron" else {}
    irrelevance: dict[str, float] = {}
    alive: dict[str, int] = {}
    for layer, sites in groups.items():
        weight = model.get_submodule(layer).weight
        alive[layer] = masks.alive(model, layer)
        if cfg.magnitude == "neuron" and all(neuron_h[s].numel() == weight.shape[0] for s in sites):
            h = torch.stack([neuron_h[s].detach().cpu().double() for s in sites]).mean(dim=0)
            irrelevance[layer] = neuron_irrelevance(h, weight.detach().cpu(), cfg.layer_reduction)
        else:
            entropy = sum(layer_h[s] for s in sites) / len(sites)
            irrelevance[layer] = layer_irrelevance(entropy, weight.detach().cpu())
    return allocate_budget(irrelevance, alive, cfg.zeta)


def apply_pruning(model: nn.Module, masks: PruningMasks, budgets: dict[str, LayerBudget]) -> int:
    """Remove the budgeted weights by magnitude; returns how many were removed in all."""
    return sum(masks.prune(model, b.name, b.prune) for b in budgets.values() if b.prune > 0)
