"""Fused mode: activation modules swapped for modules that compute the activation and count in one pass.

The swap is undone by :func:`restore`, which puts the very same module objects back in the same slots.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..activations import ActivationSpec
from ..kernels import fused_activation, fused_activation_


class FusedCountingActivation(nn.Module):
    """Stands in for one activation module while a fused profile runs.

    ``site(x)`` (given by the profile) returns ``(counts, thresholds, channel_dim, ignore_ties)`` for this call,
    or None to run the original module unchanged. The original module is kept as a plain attribute, not a
    submodule, so the model's ``state_dict`` keys do not change during profiling.

    ``inplace=True`` activations run in place, as the original modules do, through :func:`fused_activation_`:
    one pass where the backend's kernel writes x (the cuda and Triton kernels on every dense layout, the cpu
    extension where it measured faster), a count and torch's in-place activation elsewhere. On CPU an out-of-place
    fused kernel would write a freshly allocated output, whose page faults cost more than the extra read it saves;
    on CUDA, under autograd, the out-of-place kernel runs (one pass, where the in-place form records torch's op).
    """

    def __init__(self, original: nn.Module, spec: ActivationSpec, site: Callable[[torch.Tensor], tuple | None]):
        super().__init__()
        object.__setattr__(self, "original", original)
        self.kind = spec.fused_kind
        self.params = spec.fused_params(original)
        self.inplace = bool(getattr(original, "inplace", False))
        self._site = site
        self.train(original.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        found = self._site(x)
        if found is None:
            return self.original(x)
        counts, thresholds, channel_dim, ignore_ties = found
        # Under autograd on CUDA the out-of-place kernel stays: in place, x would be counted and then activated by
        # torch's op (a second read), since the graph must record torch's in-place activation.
        recorded = torch.is_grad_enabled() and x.requires_grad
        in_place = self.inplace and (x.device.type == "cpu" or not recorded)
        fused = fused_activation_ if in_place else fused_activation
        return fused(
            x,
            self.kind,
            counts,
            channel_dim=channel_dim,
            thresholds=thresholds,
            ignore_ties=ignore_ties,
            **self.params,
        )

    def extra_repr(self) -> str:
        return f"fused {self.kind} counting for {self.original!r}"


Swap = tuple[nn.Module, str, nn.Module]


def swap_in(model: nn.Module, replacements: dict[int, nn.Module]) -> list[Swap]:
    """Put ``replacements[id(child)]`` into every slot holding ``child``; returns what :func:`restore` needs."""
    swaps: list[Swap] = []
    for parent in list(model.modules()):
        for slot, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements and child is not parent:
                parent._modules[slot] = replacements[id(child)]
                swaps.append((parent, slot, child))
    return swaps


def restore(swaps: list[Swap]) -> None:
    """Undo :func:`swap_in`: the original module objects go back into their slots."""
    for parent, slot, original in reversed(swaps):
        parent._modules[slot] = original
