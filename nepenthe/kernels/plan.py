"""What a count needs that depends only on the input's metadata and the arguments, worked out once per key.

A profiler counts the same few activation shapes on every batch, so ``count_states`` looks its checks, layout
and kernel thresholds up here instead of redoing them on every call. The key is (dtype, shape, strides,
channel_dim, thresholds); the checks run, and raise, the first time a key is seen, and a key that fails is
never stored. Arguments of other types (a tensor subclass, a list of thresholds) are planned afresh each time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from .layout import ChannelView, channel_view
from .thresholds import KernelThresholds, kernel_thresholds
from .validate import check_input, check_thresholds

MAX_PLANS = 4096

B = TypeVar("B")
K = TypeVar("K")
P = TypeVar("P")
R = TypeVar("R")


# A counter prepared for one plan: counter(x, counts) adds x's counts into counts, or returns new counts when
# counts is None.
Counter = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True, slots=True)
class CountPlan:
    """Checked arguments of a count: ``view`` is None when x is empty or its layout needs a copy first.

    ``counters`` holds the counters backends prepared for this plan (``count.counter_for``), per backend and
    ``ignore_ties``, so a repeated count skips building its job.
    """

    dtype: torch.dtype
    channel_dim: int
    channels: int
    states: int
    values: tuple[float, ...]
    kernel_thresholds: KernelThresholds
    view: ChannelView | None
    empty: bool
    counters: dict[object, tuple[object, Counter]] = field(default_factory=dict, compare=False, repr=False)


_plans: dict[tuple[object, ...], CountPlan] = {}


def remember(plans: dict[tuple[object, ...], P], key: tuple[object, ...], plan: P) -> P:
    """Store ``plan`` under ``key`` in ``plans``, which is cleared first when it holds MAX_PLANS; returns ``plan``."""
    if len(plans) >= MAX_PLANS:
        plans.clear()
    plans[key] = plan
    return plan


def prepared(cache: dict[object, tuple[object, R]], backend: B, key: K, make: Callable[[B, P, K], R], plan: P) -> R:
    """What ``make(backend, plan, key)`` prepared: made once per backend and key, then kept in ``cache`` (the
    plan's)."""
    hit = cache.get((id(backend), key))
    if hit is not None and hit[0] is backend:  # the identity check: an id can outlive a test's fake backend
        return hit[1]
    made = make(backend, plan, key)
    cache[(id(backend), key)] = (backend, made)
    return made


def count_plan(x: torch.Tensor, thresholds: Sequence[float] | torch.Tensor, channel_dim: int) -> CountPlan:
    """The checked plan of counting ``x`` around ``channel_dim`` against ``thresholds`` (raises on bad input)."""
    if (
        type(x) is not torch.Tensor
        or type(channel_dim) is not int
        or type(thresholds) is not tuple
        or x.layout is not torch.strided
    ):
        return _make(x, thresholds, channel_dim)
    try:
        key = (x.dtype, x.shape, x.stride(), channel_dim, thresholds)
        plan = _plans.get(key)
    except (TypeError, RuntimeError):  # unhashable thresholds, or a nested x without sizes: _make names it
        return _make(x, thresholds, channel_dim)
    return plan if plan is not None else remember(_plans, key, _make(x, thresholds, channel_dim))


def _make(x: torch.Tensor, thresholds: Sequence[float] | torch.Tensor, channel_dim: int) -> CountPlan:
    cd = check_input(x, channel_dim)
    values = check_thresholds(thresholds)
    empty = x.numel() == 0
    view = None if empty else channel_view(x, cd)
    kt = kernel_thresholds(values, x.dtype)
    return CountPlan(x.dtype, cd, x.shape[cd], len(values) + 1, values, kt, view, empty)
