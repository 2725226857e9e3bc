"""Latency of a model as the loop reports it: warm-up, then the median of timed forward passes."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.inference_mode()
def measure_latency(model: nn.Module, example_input: torch.Tensor, warmup: int = 10, repeats: int = 50) -> float:
    """Median wall time of one forward pass of ``example_input``, in milliseconds (eval mode, no grad).

    Example::

        >>> ms = measure_latency(model, torch.randn(1, 1, 28, 28))
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    model.eval()
    cuda = example_input.device.type == "cuda"
    for _ in range(warmup):
        model(example_input)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(example_input.device)
        start = time.perf_counter()
        model(example_input)
        if cuda:
            torch.cuda.synchronize(example_input.device)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
