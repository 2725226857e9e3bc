"""``count_states``: exact per-channel counts of activation states, on any backend."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dispatch import select_backend
from .jobs import CountJob
from .layout import readable_view
from .plan import count_plan
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
    if counts is None:
        counts = torch.zeros(plan.channels, plan.states, dtype=torch.int64, device=device)
    else:
        check_counts(counts, plan.channels, plan.states, device)
    chosen = select_backend(device, backend)
    if plan.empty:
        return counts
    if plan.view is None:  # a layout no two strides describe: count a contiguous copy
        x, view = readable_view(x, plan.channel_dim)
    else:
        view = plan.view
    job = CountJob(x, plan.channel_dim, view, plan.values, plan.kernel_thresholds, bool(ignore_ties), counts)
    chosen.count(job)
    return counts
