"""Fused activations: compute ReLU / Hardtanh / LeakyReLU / GELU and count the input's states in one pass.

The forward pass runs one backend kernel that reads x once, writes the activation and adds the counts. The
backward pass is torch's own activation gradient, so gradients are identical to the unfused activation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dispatch import select_backend
from .jobs import FUSED_KINDS, FusedJob
from .layout import channel_view, readable_view
from .thresholds import kernel_thresholds
from .validate import check_counts, check_input, check_thresholds


def default_thresholds(kind: str, params: dict[str, object]) -> tuple[float, ...]:
    """The knees of a fused activation: its states."""
    if kind == "hardtanh":
        return (float(params["min_val"]), float(params["max_val"]))
    return (0.0,)


def _check_params(kind: str, params: dict[str, object]) -> dict[str, object]:
    if kind not in FUSED_KINDS:
        raise ValueError(f"kind must be one of {FUSED_KINDS}, got {kind!r}")
    needed = {"hardtanh": ("min_val", "max_val"), "leaky_relu": ("negative_slope",)}.get(kind, ())
    missing = [p for p in needed if p not in params]
    if missing:
        raise ValueError(f"fused {kind} needs parameter(s) {missing}")
    if kind == "gelu":
        params = {"approximate": params.get("approximate", "none")}
        if params["approximate"] not in ("none", "tanh"):
            raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {params['approximate']!r}")
    if kind == "hardtanh" and not float(params["min_val"]) < float(params["max_val"]):
        raise ValueError(f"hardtanh needs min_val < max_val, got {params['min_val']}, {params['max_val']}")
    return dict(params)


def _activation_grad(grad: torch.Tensor, x: torch.Tensor, kind: str, params: dict[str, object]) -> torch.Tensor:
    aten = torch.ops.aten
    if kind == "relu":
        return aten.threshold_backward(grad, x, 0)
    if kind == "hardtanh":
        return aten.hardtanh_backward(grad, x, params["min_val"], params["max_val"])
    if kind == "leaky_relu":
        return aten.leaky_relu_backward(grad, x, params["negative_slope"], False)
    return aten.gelu_backward(grad, x, approximate=params["approximate"])


def _fused_forward(  # noqa: PLR0913
    x: torch.Tensor,
    counts: torch.Tensor,
    kind: str,
    params: dict[str, object],
    thresholds: tuple[float, ...],
    channel_dim: int,
    ignore_ties: bool,
    backend: str | None,
) -> torch.Tensor:
    """activation(x), with the states of x added into counts by the backend's fused kernel (checked arguments)."""
    chosen = select_backend(x.device, backend)
    xr, view = readable_view(x, channel_dim)
    y = torch.empty_like(xr)
    if y.stride() != xr.stride() and any(
        n > 1 and a != b for n, a, b in zip(xr.shape, xr.stride(), y.stride(), strict=True)
    ):
        # x is not dense, so empty_like chose another layout, whose channel view may pair the non-channel
        # dims differently: give x and y one layout so that one (outer, C, inner) index reads and writes both.
        xr = xr.contiguous()
        view = channel_view(xr, channel_dim)
        y = torch.empty_like(xr)
    y_view = view if y.stride() == xr.stride() else readable_view(y, channel_dim)[1]
    if x.numel():
        job = FusedJob(
            xr,
            channel_dim,
            view,
            thresholds,
            kernel_thresholds(thresholds, x.dtype),
            ignore_ties,
            counts,
            y=y,
            y_view=y_view,
            kind=kind,
            params=params,
        )
        chosen.fused_forward(job)
    return y


class _FusedActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, counts, kind, params, thresholds, channel_dim, ignore_ties, backend):  # noqa: PLR0913
        y = _fused_forward(x, counts, kind, params, thresholds, channel_dim, ignore_ties, backend)
        ctx.save_for_backward(x)
        ctx.kind, ctx.params = kind, params
        ctx.mark_non_differentiable(counts)
        return y

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _activation_grad(grad, x, ctx.kind, ctx.params), None, None, None, None, None, None, None


def fused_activation(
    x: torch.Tensor,
    kind: str,
    counts: torch.Tensor,
    *,
    channel_dim: int = 1,
    thresholds: Sequence[float] | None = None,
    ignore_ties: bool = False,
    backend: str | None = None,
    **params: object,
) -> torch.Tensor:
    """Apply activation ``kind`` to ``x`` and add the states of ``x`` into ``counts`` in the same pass.

    ``kind``: ``"relu"``, ``"hardtanh"`` (``min_val``, ``max_val``; ReLU6 is ``hardtanh(0, 6)``),
    ``"leaky_relu"`` (``negative_slope``) or ``"gelu"`` (``approximate="none"|"tanh"``). The states default to
    the activation's knees. Differentiable in ``x``; gradients are torch's own.

    Example::

        >>> counts = torch.zeros(3, 2, dtype=torch.int64)
        >>> y = fused_activation(torch.randn(8, 3, 4, 4), "relu", counts)
        >>> int(counts.sum())
        128
    """
    channel_dim = check_input(x, channel_dim)
    params = _check_params(kind, params)
    values = check_thresholds(default_thresholds(kind, params) if thresholds is None else thresholds)
    check_counts(counts, x.shape[channel_dim], len(values) + 1, x.device)
    args = (x, counts, kind, params, values, channel_dim, bool(ignore_ties), backend)
    if torch.is_grad_enabled() and x.requires_grad:
        return _FusedActivation.apply(*args)
    return _fused_forward(*args)  # no graph to record: skip the autograd Function's cost (a few microseconds)
