"""The modules a linearized activation becomes: a per-channel affine map, and a per-call-site dispatcher.

A linearized call site acts on each channel ``c`` as ``y = scale[c] * x + shift[c]`` (METHOD.md section 2).
A module called several times per forward pass (torchvision's BasicBlock ``relu``) has one layer per call; when
only some of its calls are linearized, :class:`CallSiteDispatch` stands in for it and routes call ``k`` to the
module for that call site.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAffine(nn.Module):
    """``y = scale * x + shift`` with one ``scale``/``shift`` per channel along ``channel_dim``.

    ``scale`` and ``shift`` are 0-d (the same map for every channel) or 1-d of length C. ``channel_dim`` is 1 for
    ``(N, C, ...)`` feature maps and -1 for channels-last token tensors. ``site`` names the call site it replaced,
    ``exact`` says whether the activation really is this affine map on the inputs seen, and ``states`` (when
    known) is the activation state each channel stays in: the provenance of ``scale`` and ``shift``.

    Example::

        >>> m = ChannelAffine(torch.tensor([0.0, 1.0]), torch.zeros(2), channel_dim=1, site="relu")
        >>> m(torch.ones(1, 2, 1, 1)).flatten().tolist()
        [0.0, 1.0]
    """

    def __init__(
        self,
        scale: torch.Tensor,
        shift: torch.Tensor,
        channel_dim: int = 1,
        site: str = "",
        exact: bool = True,
        states: list[int] | None = None,
    ) -> None:
        super().__init__()
        scale = torch.as_tensor(scale, dtype=torch.float32).detach().clone()
        shift = torch.as_tensor(shift, dtype=torch.float32).detach().clone()
        if scale.dim() > 1 or shift.dim() > 1:
            raise ValueError(
                f"scale and shift must be 0-d or 1-d, got shapes {tuple(scale.shape)}, {tuple(shift.shape)}"
            )
        if scale.dim() == 1 and shift.dim() == 1 and scale.shape != shift.shape:
            raise ValueError(f"scale and shift lengths differ: {scale.shape[0]} vs {shift.shape[0]}")
        if scale.dim() != shift.dim():
            n = max(scale.numel(), shift.numel())
            scale, shift = scale.expand(n).clone(), shift.expand(n).clone()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.channel_dim = int(channel_dim)
        self.site = site
        self.exact = bool(exact)
        self.states = list(states) if states is not None else None

    @property
    def channels(self) -> int | None:
        """Number of channels, or None for a 0-d map that applies to any channel count."""
        return None if self.scale.dim() == 0 else self.scale.shape[0]

    def is_identity(self) -> bool:
        """True when the map is exactly ``y = x`` (nothing to compute)."""
        return bool((self.scale == 1).all() and (self.shift == 0).all())

    def broadcast_shape(self, ndim: int) -> list[int]:
        """Shape that puts the channels of a per-channel vector on ``channel_dim`` of an ``ndim`` tensor."""
        dim = self.channel_dim % ndim
        shape = [1] * ndim
        shape[dim] = -1
        return shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale.dim() == 0:
            return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        c = self.scale.shape[0]
        if x.dim() <= self.channel_dim % max(x.dim(), 1) or x.shape[self.channel_dim] != c:
            raise ValueError(
                f"ChannelAffine for {self.site or 'this layer'} has {c} channels on dim {self.channel_dim}, "
                f"but its input has shape {tuple(x.shape)}; give the channel dim through the profile"
            )
        shape = self.broadcast_shape(x.dim())
        return x * self.scale.to(x.dtype).view(shape) + self.shift.to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        kind = "scalar" if self.scale.dim() == 0 else f"channels={self.scale.shape[0]}"
        return f"{kind}, channel_dim={self.channel_dim}, site={self.site!r}, exact={self.exact}"


class CallSiteDispatch(nn.Module):
    """Stands in for an activation module that is called several times per forward pass.

    Call ``k`` of a forward pass goes to ``sites[str(k)]`` when that call site was linearized and to the
    original module otherwise. The call counter is reset before every forward pass of the root model (a
    forward pre-hook installed by :func:`nepenthe.linearize`) and also wraps at ``calls`` when the number of calls
    per forward is known, so calling a submodule on its own stays correct.
    """

    def __init__(self, original: nn.Module, calls: int | None = None) -> None:
        super().__init__()
        self.original = original
        self.sites = nn.ModuleDict()
        self.calls = calls
        self.counter = 0

    def site_module(self, index: int) -> nn.Module:
        """The module that call ``index`` runs."""
        key = str(index)
        return self.sites[key] if key in self.sites else self.original

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = self.counter
        self.counter = index + 1 if self.calls is None else (index + 1) % self.calls
        return self.site_module(index)(x)

    def extra_repr(self) -> str:
        return f"calls={self.calls}, linearized={sorted(int(k) for k in self.sites)}"


def reset_dispatch_counters(root: nn.Module, args: tuple) -> None:
    """Forward pre-hook of the root model: every :class:`CallSiteDispatch` starts a forward pass at call 0.

    A module-level function so that the hook survives ``torch.save`` / ``copy.deepcopy`` of the model.
    """
    for module in root.modules():
        if isinstance(module, CallSiteDispatch):
            module.counter = 0


def install_dispatch_reset(model: nn.Module) -> None:
    """Install :func:`reset_dispatch_counters` on ``model`` once."""
    if not any(h is reset_dispatch_counters for h in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(reset_dispatch_counters)
