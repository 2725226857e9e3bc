"""What a fused activation call needs that depends only on the input's metadata and the arguments, worked out once
per key, as ``plan.py`` does for counts.

A fused profile calls ``fused_activation`` on the same few shapes every batch. Its checks, its kernel thresholds
(rounded with numpy) and a job per call cost about 8 us over torch's own activation, a fifth of the time of a 7x7
map's fused call. The key is (dtype, shape, strides, channel_dim, kind, params, thresholds, ignore_ties); the
checks run, and raise, the first time a key is seen, and a key that fails is never stored. Arguments of other
types (a tensor subclass, a list of thresholds, a parameter that is not a plain number or string, or -0.0) are planned
afresh each time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .jobs import FUSED_KINDS
from .layout import ChannelView, channel_view
from .plan import remember
from .thresholds import KernelThresholds, kernel_thresholds
from .validate import check_input, check_thresholds

# The thresholds a caller gives: None for the activation's knees.
Given = Sequence[float] | None

# A forward prepared for one plan: forward(x, counts) returns activation(x) and adds x's states into counts.
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class FusedPlan:
    """Checked arguments of a fused call. ``view`` is x's channel view, which ``torch.empty_like(x)`` shares (x is
    dense): None when x is empty, or when its layout needs a copy or gives y other strides (the general path).

    ``forwards`` holds the forwards backends prepared for this plan (``fused.forward_for``), per backend.
    """

    dtype: torch.dtype
    kind: str
    params: dict[str, object]
    values: tuple[float, ...]
    channel_dim: int
    channels: int
    states: int
    kernel_thresholds: KernelThresholds
    ignore_ties: bool
    view: ChannelView | None
    forwards: dict[object, tuple[object, Forward]] = field(default_factory=dict, compare=False, repr=False)


def default_thresholds(kind: str, params: dict[str, object]) -> tuple[float, ...]:
    """The knees of a fused activation: its states."""
    if kind == "hardtanh":
        return (float(params["min_val"]), float(params["max_val"]))
    return (0.0,)


def check_params(kind: str, params: dict[str, object]) -> dict[str, object]:
    """Check a fused kind and its parameters; returns the parameters the kind takes."""
    if kind not in FUSED_KINDS:
        raise ValueError(f"kind must be one of {FUSED_KINDS}, got {kind!r}")
    needed = {"hardtanh": ("min_val", "max_val"), "leaky_relu": ("negative_slope",)}.get(kind, ())
    missing = [p for p in needed if p not in params]
    if missing:
        raise ValueError(f"fused {kind} needs parameter(s) {missing}")
    takes = ("approximate",) if kind == "gelu" else needed
    unknown = [p for p in params if p not in takes]
    if unknown:  # a misspelt name would otherwise be dropped, and the activation computed without it
        raise ValueError(f"fused {kind} got unknown parameter(s) {unknown} (it takes {list(takes) or 'none'})")
    if kind == "gelu":
        params = {"approximate": params.get("approximate", "none")}
        if params["approximate"] not in ("none", "tanh"):
            raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {params['approximate']!r}")
    if kind == "hardtanh" and not float(params["min_val"]) < float(params["max_val"]):
        raise ValueError(f"hardtanh needs min_val < max_val, got {params['min_val']}, {params['max_val']}")
    return dict(params)


_plans: dict[tuple[object, ...], FusedPlan] = {}


def fused_plan(  # noqa: PLR0913
    x: torch.Tensor,
    kind: str,
    params: dict[str, object],
    thresholds: Given,
    channel_dim: int,
    ignore_ties: bool,
) -> FusedPlan:
    """The checked plan of a fused ``kind`` over ``x`` (raises on bad input)."""
    if (
        type(x) is not torch.Tensor
        or type(channel_dim) is not int
        or type(kind) is not str
        or not (thresholds is None or type(thresholds) is tuple)
        or x.layout is not torch.strided
        or (params and not all(_plain(v) for v in params.values()))
    ):
        return _make(x, kind, params, thresholds, channel_dim, ignore_ties)
    try:
        key = (x.dtype, x.shape, x.stride(), channel_dim, kind, tuple(params.items()), thresholds, ignore_ties)
        plan = _plans.get(key)
    except (TypeError, RuntimeError):  # unhashable thresholds, or a nested x without sizes: _make names it
        return _make(x, kind, params, thresholds, channel_dim, ignore_ties)
    return (
        plan
        if plan is not None
        else remember(_plans, key, _make(x, kind, params, thresholds, channel_dim, ignore_ties))
    )


def _plain(value: object) -> bool:
    """A parameter that can be a key: a str, an int or a float, but not -0.0, which equals 0.0 as a key but gives
    hardtanh other output bits."""
    kind = type(value)
    return kind is str or kind is int or (kind is float and (value != 0.0 or math.copysign(1.0, value) > 0.0))


def _make(  # noqa: PLR0913
    x: torch.Tensor, kind: str, params: dict[str, object], thresholds: Given, dim: int, ties: bool
) -> FusedPlan:
    cd = check_input(x, dim)
    checked = check_params(kind, params)
    values = check_thresholds(default_thresholds(kind, checked) if thresholds is None else thresholds)
    view = channel_view(x, cd) if x.numel() and _dense(x.shape, x.stride()) else None
    kt = kernel_thresholds(values, x.dtype)
    return FusedPlan(x.dtype, kind, checked, values, cd, x.shape[cd], len(values) + 1, kt, bool(ties), view)


def _dense(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` and ``strides`` covers its memory once, without gaps: then
    ``torch.empty_like`` gives it the same strides (size-1 dims, whose strides do not matter, included)."""
    expected = 1
    for size, stride in sorted(((n, s) for n, s in zip(shape, strides, strict=True) if n != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True
