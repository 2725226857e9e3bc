"""Activation call sites: one *layer* per call of an activation module in a forward pass (METHOD.md 1).

A module called once is named by its qualified name (``features.2``); a module called k > 1 times in one
forward pass gives layers ``NAME@0`` .. ``NAME@{k-1}`` in call order (torchvision's BasicBlock ``relu``).
The profiler and the surgeon both name layers with :func:`call_site_names`, so their names always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..activations import activation_spec


@dataclass(frozen=True)
class CallSite:
    """One call of an activation module: its layer name, module name, call index and the module itself."""

    name: str
    module_name: str
    call_index: int
    module: nn.Module


def site_name(module_name: str, call_index: int, calls_per_forward: int) -> str:
    """The layer name of call ``call_index`` of a module called ``calls_per_forward`` times per forward."""
    return module_name if calls_per_forward == 1 else f"{module_name}@{call_index}"


def call_site_names(calls: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """Layer names for ``(module_name, call_index)`` pairs seen in one forward pass."""
    calls = list(calls)
    per_module: dict[str, int] = {}
    for module_name, index in calls:
        per_module[module_name] = max(per_module.get(module_name, 0), index + 1)
    return {(m, i): site_name(m, i, per_module[m]) for m, i in calls}


def activation_modules(model: nn.Module, is_tracked: Callable[[nn.Module], bool] | None = None) -> dict[str, nn.Module]:
    """Every activation module of ``model`` by qualified name (all registered activations by default)."""
    tracked = is_tracked or (lambda m: activation_spec(m) is not None)
    return {name: m for name, m in model.named_modules(remove_duplicate=False) if name and tracked(m)}


def trace_call_sites(model: nn.Module, *inputs: object, **kwargs: object) -> list[CallSite]:
    """Run one forward pass (no grad) and list the activation call sites in call order.

    Example::

        >>> import torch, torchvision
        >>> sites = trace_call_sites(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> len(sites), sites[1].name
        (17, 'layer1.0.relu@0')
    """
    modules = activation_modules(model)
    order: list[tuple[str, int, nn.Module]] = []
    seen: dict[str, int] = {}
    handles = []
    hooked: set[int] = set()
    for name, module in modules.items():
        if id(module) in hooked:  # a module shared under several names is one module: named by its first name
            continue
        hooked.add(id(module))

        def pre_hook(mod: nn.Module, args: tuple, name: str = name) -> None:
            index = seen.get(name, 0)
            seen[name] = index + 1
            order.append((name, index, mod))

        handles.append(module.register_forward_pre_hook(pre_hook))
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    names = call_site_names((m, i) for m, i, _ in order)
    return [CallSite(names[(m, i)], m, i, mod) for m, i, mod in order]
