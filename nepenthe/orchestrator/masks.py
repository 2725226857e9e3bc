"""Unstructured magnitude pruning with persistent masks (METHOD.md section 3).

The masks live beside the model, not inside it: the model keeps plain ``weight`` parameters (no
``weight_orig`` re-parametrisation), so the profiler, the surgeon and ``state_dict`` see an ordinary model at
every moment, and "removing" the masks at the end is simply dropping this object. Training keeps pruned
weights at zero through :meth:`PruningMasks.apply` after each optimizer step and :meth:`mask_gradients` before.
"""

from __future__ import annotations

import torch
from torch import nn


class PruningMasks:
    """Boolean keep-masks per module name (True = weight kept).

    Usage (a sketch)::

        masks = PruningMasks()
        masks.prune(model, "layer1.0.conv1", 100)   # zero the 100 smallest remaining |w|
        masks.apply(model)                           # after an optimizer step
    """

    def __init__(self) -> None:
        self.masks: dict[str, torch.Tensor] = {}

    def _weight(self, model: nn.Module, name: str) -> torch.Tensor:
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"the model has no module named {name!r} to prune") from err
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"module {name!r} ({type(module).__name__}) has no weight tensor to prune")
        return weight

    def mask(self, model: nn.Module, name: str) -> torch.Tensor:
        """The mask of ``name``, created from the weight's current nonzero entries on first use."""
        weight = self._weight(model, name)
        if name not in self.masks:
            self.masks[name] = weight.detach() != 0
        mask = self.masks[name]
        if mask.shape != weight.shape:
            raise ValueError(f"mask of {name!r} has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
        if mask.device != weight.device:
            self.masks[name] = mask = mask.to(weight.device)
        return mask

    def alive(self, model: nn.Module, name: str) -> int:
        """Weights of ``name`` still kept (``||w||_0`` as far as pruning is concerned)."""
        return int(self.mask(model, name).sum())

    @torch.no_grad()
    def prune(self, model: nn.Module, name: str, amount: int) -> int:
        """Remove the ``amount`` kept weights of smallest magnitude from ``name`` (ties: lowest index first).

        Returns how many were removed (at most the number still kept).
        """
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount}")
        weight = self._weight(model, name)
        mask = self.mask(model, name)
        flat = mask.view(-1)
        kept = flat.nonzero().squeeze(1)
        amount = min(int(amount), kept.numel())
        if amount:
            order = torch.argsort(weight.detach().reshape(-1)[kept].abs(), stable=True)[:amount]
            flat[kept[order]] = False
        weight.mul_(mask)
        return amount

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero every pruned weight (after an optimizer step moved it)."""
        for name in self.masks:
            self._weight(model, name).mul_(self.mask(model, name))

    @torch.no_grad()
    def mask_gradients(self, model: nn.Module) -> None:
        """Zero the gradients of pruned weights, so momentum and weight decay keep no memory of them."""
        for name in self.masks:
            weight = self._weight(model, name)
            if weight.grad is not None:
                weight.grad.mul_(self.mask(model, name))

    def sparsity(self, model: nn.Module) -> float:
        """Fraction of masked weights over all masked modules (0.0 when there are none)."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(self.alive(model, n) for n in self.masks)
        return 1.0 - kept / total if total else 0.0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The masks, on CPU."""
        return {name: mask.cpu().clone() for name, mask in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the masks by ``state`` (as written by :meth:`state_dict`)."""
        for name, mask in state.items():
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise ValueError(f"mask {name!r} must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
        self.masks = {name: mask.clone() for name, mask in state.items()}
