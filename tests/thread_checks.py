"""Concurrent calls from Python threads: run one worker per thread and check what each one accumulated."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch


def assert_each_thread_counted(
    work: Callable[[int], Sequence[torch.Tensor]], want: Sequence[torch.Tensor], rounds: int, threads: int = 4
) -> None:
    """Run ``work(worker)`` on ``threads`` threads at once; each must return ``want`` times ``rounds``."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(work, range(threads)))
    for worker, counts in enumerate(results):
        for i, (got, w) in enumerate(zip(counts, want, strict=True)):
            assert torch.equal(got.cpu(), w * rounds), f"thread {worker}, case {i}"
