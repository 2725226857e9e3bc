"""``count_states``: exact per-channel counts of activation states, on any backend."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch

from .dispatch import select_backend
from .jobs import CountJob
from .layout import readable_view
from .plan import Counter, CountPlan, count_plan, prepared
from .validate import check_counts


def count_states(
    x: torch.Tensor,
    thresholds: Sequence[float] = (0.0,),
    *,
    channel_dim: int = 1,
    counts: torch.Tensor | None = None,
    ignore_ties: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Count, per channel, how many values of ``x`` fall in each state.

    The state of a value v is the number of thresholds t with ``v > t``, so ``K = len(thresholds) + 1``
    states. NaN is counted in no state; with ``ignore_ties=True`` a value equal to a threshold is counted in
    no state either (NEPENTHE's "don't care"). Returns int64 counts of shape ``(C, K)`` with
    ``C = x.shape[channel_dim]``; when ``counts`` is given, adds into it in place and returns it. Any strided
    layout is read where it lies (channels_last included). No host synchronisation.

    ``backend``: ``"torch"`` (the reference), ``"cpu"``, ``"cuda"`` or ``"triton"``; default: the best one
    loaded for ``x``'s device, or the ``NEPENTHE_BACKEND`` environment variable.

    Example::

        >>> x = torch.tensor([[-1.0, 2.0], [0.0, 3.0]])   # (N=2, C=2)
        >>> count_states(x)
        tensor([[2, 0],
                [0, 2]])
    """
    plan = count_plan(x, thresholds, channel_dim)
    device = x.device
    if counts is not None:
        check_counts(counts, plan.channels, plan.states, device)
    chosen = select_backend(device, backend)
    if plan.view is not None:
        return counter_for(plan, chosen, bool(ignore_ties))(x, counts)
    if counts is None:
        counts = torch.zeros(plan.channels, plan.states, dtype=torch.int64, device=device)
    if plan.empty:
        return counts
    x, view = readable_view(x, plan.channel_dim)  # a layout no two strides describe: count a contiguous copy
    chosen.count(CountJob(x, plan.channel_dim, view, plan.values, plan.kernel_thresholds, bool(ignore_ties), counts))
    return counts


def counter_for(plan: CountPlan, backend: ModuleType, ignore_ties: bool) -> Counter:
    """The counter ``backend`` prepared for ``plan`` (made once per backend and ``ignore_ties``, kept in the plan).

    A backend with ``prepare_count(plan, ignore_ties)`` prepares its own (the cpu backend works out its
    extension's arguments once); any other gets :func:`job_counter`.
    """
    return prepared(plan.counters, backend, ignore_ties, _new_counter, plan)


def _new_counter(backend: ModuleType, plan: CountPlan, ignore_ties: bool) -> Counter:
    prepare = getattr(backend, "prepare_count", None)
    return prepare(plan, ignore_ties) if prepare is not None else job_counter(backend, plan, ignore_ties)


def job_counter(backend: ModuleType, plan: CountPlan, ignore_ties: bool) -> Counter:
    """A counter that hands ``backend.count`` a :class:`CountJob` per call, into zeroed counts when none given."""
    view = plan.view
    assert view is not None

    def count(x: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
        if counts is None:
            counts = torch.zeros(plan.channels, plan.states, dtype=torch.int64, device=x.device)
        backend.count(CountJob(x, plan.channel_dim, view, plan.values, plan.kernel_thresholds, ignore_ties, counts))
        return counts

    return count
