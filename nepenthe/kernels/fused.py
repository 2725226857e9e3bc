"""Fused activations: compute ReLU / Hardtanh / LeakyReLU / GELU and count the input's states in one pass.

The forward pass runs one backend kernel that reads x once, writes the activation and adds the counts (or, where
the backend's ``fused_one_pass(plan)`` says a count and torch's activation are faster, those two). The backward pass
is torch's own activation gradient, so gradients are identical to the unfused activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch
from torch.autograd.graph import increment_version

from . import torch_backend
from .count import count_states
from .dispatch import select_backend
from .fused_plan import Forward, FusedPlan, fused_plan
from .jobs import FusedJob
from .layout import ChannelView, channel_view, readable_view
from .plan import prepared
from .validate import check_counts


def _activation_grad(grad: torch.Tensor, x: torch.Tensor, kind: str, params: dict[str, object]) -> torch.Tensor:
    aten = torch.ops.aten
    if kind == "relu":
        return aten.threshold_backward(grad, x, 0)
    if kind == "hardtanh":
        return aten.hardtanh_backward(grad, x, params["min_val"], params["max_val"])
    if kind == "leaky_relu":
        return aten.leaky_relu_backward(grad, x, params["negative_slope"], False)
    return aten.gelu_backward(grad, x, approximate=params["approximate"])


def run_fused(x: torch.Tensor, counts: torch.Tensor, plan: FusedPlan, backend: ModuleType) -> torch.Tensor:
    """activation(x), with the states of x added into counts by ``backend``'s fused kernel (checked arguments), or
    by a count and torch's activation where the backend's ``fused_one_pass(plan)`` says those are faster."""
    one_pass = getattr(backend, "fused_one_pass", None)
    if one_pass is not None and not one_pass(plan):
        count_states(x, plan.values, channel_dim=plan.channel_dim, counts=counts, ignore_ties=plan.ignore_ties,
                     backend=backend.NAME)  # fmt: skip
        return torch_backend.activation(x, plan.kind, plan.params)
    if plan.view is not None:
        return prepared(plan.forwards, backend, None, _new_forward, plan)(x, counts)
    xr, view = readable_view(x, plan.channel_dim)
    y = torch.empty_like(xr)
    if y.stride() != xr.stride() and any(
        n > 1 and a != b for n, a, b in zip(xr.shape, xr.stride(), y.stride(), strict=True)
    ):
        # x is not dense, so empty_like chose another layout, whose channel view may pair the non-channel
        # dims differently: give x and y one layout so that one (outer, C, inner) index reads and writes both.
        xr = xr.contiguous()
        view = channel_view(xr, plan.channel_dim)
        y = torch.empty_like(xr)
    y_view = view if y.stride() == xr.stride() else readable_view(y, plan.channel_dim)[1]
    if x.numel():
        backend.fused_forward(_job(xr, counts, plan, view, y, y_view))
    return y


def _job(
    x: torch.Tensor, counts: torch.Tensor, plan: FusedPlan, view: ChannelView, y: torch.Tensor, y_view: ChannelView
) -> FusedJob:
    return FusedJob(
        x, plan.channel_dim, view, plan.values, plan.kernel_thresholds, plan.ignore_ties, counts,
        y=y, y_view=y_view, kind=plan.kind, params=plan.params,
    )  # fmt: skip


def _new_forward(backend: ModuleType, plan: FusedPlan, _: None) -> Forward:
    """``backend.prepare_fused(plan)`` where the backend has one (the cpu backend works out its extension's
    arguments once), else a forward that hands ``backend.fused_forward`` a job per call. Only for plans whose
    ``view`` x and ``torch.empty_like(x)`` share."""
    prepare = getattr(backend, "prepare_fused", None)
    if prepare is not None:
        return prepare(plan)
    view = plan.view
    assert view is not None

    def forward(x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        backend.fused_forward(_job(x, counts, plan, view, y, view))
        return y

    return forward


class _FusedActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, counts, plan, backend):
        y = run_fused(x, counts, plan, backend)
        ctx.save_for_backward(x)
        ctx.plan = plan
        ctx.mark_non_differentiable(counts)
        return y

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _activation_grad(grad, x, ctx.plan.kind, ctx.plan.params), None, None, None


def _checked(
    x: torch.Tensor,
    kind: str,
    counts: torch.Tensor,
    channel_dim: int,
    thresholds: Sequence[float] | None,
    ignore_ties: bool,
    backend: str | None,
    params: dict[str, object],
) -> tuple[FusedPlan, ModuleType]:
    """The plan of a fused call and the backend it runs on; raises on bad arguments before any kernel runs."""
    plan = fused_plan(x, kind, params, thresholds, channel_dim, bool(ignore_ties))
    check_counts(counts, plan.channels, plan.states, x.device)
    return plan, select_backend(x.device, backend)


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
    ``"leaky_relu"`` (``negative_slope``) or ``"gelu"`` (``approximate="none"|"tanh"``); any other parameter
    name raises ``ValueError``. The states default to the activation's knees. Differentiable in ``x``; gradients
    are torch's own.

    Example::

        >>> counts = torch.zeros(3, 2, dtype=torch.int64)
        >>> y = fused_activation(torch.randn(8, 3, 4, 4), "relu", counts)
        >>> int(counts.sum())  # 8 * 3 * 4 * 4 values
        384
    """
    plan, chosen = _checked(x, kind, counts, channel_dim, thresholds, ignore_ties, backend, params)
    if torch.is_grad_enabled() and x.requires_grad:
        return _FusedActivation.apply(x, counts, plan, chosen)
    return run_fused(x, counts, plan, chosen)  # no graph to record: skip the autograd Function's cost (a few us)


def fused_activation_(
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
    """In place: overwrite ``x`` with activation ``kind`` of ``x`` and add the states of ``x`` (as it was) into
    ``counts``; returns ``x``. Arguments as :func:`fused_activation`.

    Where the backend's ``fused_in_place(plan)`` says its kernel is faster so, x is read once: ``cuda`` on dense
    layouts and ``triton`` on those whose channel blocks share no cache line (each value is overwritten by the
    thread that read it), ``cpu`` on dense float32, float16 and bfloat16 (each block or row is counted, then
    overwritten while it is in cache), except GELU in bfloat16 on NCHW rows, where torch's GELU is quicker.
    Otherwise (the torch backend, other layouts, or autograd recording x) x is counted and then activated by
    torch's own in-place operation, which records the same graph as ``F.relu(x, inplace=True)``. GELU has no
    in-place form in torch, so it cannot be recorded.

    Example::

        >>> x, counts = torch.tensor([[-1.0, 2.0]]), torch.zeros(2, 2, dtype=torch.int64)
        >>> fused_activation_(x, "relu", counts)
        tensor([[0., 2.]])
        >>> counts
        tensor([[1, 0],
                [0, 1]])
    """
    plan, chosen = _checked(x, kind, counts, channel_dim, thresholds, ignore_ties, backend, params)
    _check_writable(x)
    recorded = torch.is_grad_enabled() and x.requires_grad
    in_place = getattr(chosen, "fused_in_place", None)
    if plan.view is not None and not recorded and in_place is not None and in_place(plan):
        chosen.fused_forward(_job(x, counts, plan, plan.view, x, plan.view))
        increment_version(x)  # as torch's in-place ops do: a graph that saved x sees that it changed
        return x
    if recorded and plan.kind == "gelu":
        raise ValueError("fused_activation_: gelu has no in-place form in torch, and autograd records x here")
    if any(n > 1 and step == 0 for n, step in zip(x.shape, x.stride(), strict=True)):  # dense x (a view) has none
        raise RuntimeError(
            f"fused_activation_: x (shape {tuple(x.shape)}, strides {x.stride()}) has several elements in one memory "
            "location (an expanded tensor), which cannot be written in place; pass x.contiguous(), or call "
            "fused_activation"
        )
    count_states(x, plan.values, channel_dim=plan.channel_dim, counts=counts, ignore_ties=plan.ignore_ties,
                 backend=backend)  # fmt: skip
    return _activate_in_place(x, plan.kind, plan.params)


def _check_writable(x: torch.Tensor) -> None:
    """Refuse, as torch's in-place operations do, but before anything is counted, an x that may not be written in
    place: an inference tensor outside inference mode, and a leaf that requires grad (or a view of one) while
    autograd records."""
    if x.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(
            "fused_activation_: x is an inference tensor (made under torch.inference_mode), which may not be written "
            "in place outside inference mode; call it under torch.inference_mode(), or pass x.clone()"
        )
    if x.requires_grad and torch.is_grad_enabled() and (x.is_leaf or (x._base is not None and x._base.is_leaf)):
        raise RuntimeError(
            "fused_activation_: x is a leaf tensor that requires grad (or a view of one), which autograd cannot let "
            "be overwritten in place; call it under torch.no_grad(), or call fused_activation"
        )


def _activate_in_place(x: torch.Tensor, kind: str, params: dict[str, object]) -> torch.Tensor:
    F = torch.nn.functional
    if kind == "relu":
        return torch.relu_(x)
    if kind == "hardtanh":
        return F.hardtanh_(x, float(params["min_val"]), float(params["max_val"]))
    if kind == "leaky_relu":
        return F.leaky_relu_(x, float(params["negative_slope"]))
    return x.copy_(F.gelu(x, approximate=str(params["approximate"])))
