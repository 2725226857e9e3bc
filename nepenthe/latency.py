"""Latency as nepenthe reports it: warm-up, then the median of timed forward passes, models timed round-robin.

Round-robin timing matters on shared machines: a change of load hits every compared model alike, so their
ratios stay meaningful even when the absolute times drift.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def measure_latency(model: nn.Module, x: torch.Tensor, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of ``model(x)`` in milliseconds (no grad; CUDA synchronised when on GPU)."""
    return compare_latency({"model": model}, x, warmup, repeats)["model"]


def compare_latency(
    models: dict[str, nn.Module], x: torch.Tensor, warmup: int = 3, repeats: int = 10, clock: str = "wall"
) -> dict[str, float]:
    """Median milliseconds of each model on ``x``, timed round-robin so that load changes hit all of them alike."""
    return {name: statistics.median(t) for name, t in latency_samples(models, x, warmup, repeats, clock).items()}


def latency_samples(
    models: dict[str, nn.Module], x: torch.Tensor, warmup: int = 3, repeats: int = 10, clock: str = "wall"
) -> dict[str, list[float]]:
    """Milliseconds of each timed call of each model on ``x`` (round-robin, after ``warmup`` untimed rounds).

    ``clock="process"`` measures this process's CPU time instead of wall time (the CPU cost summed over torch's
    threads, not the latency): less disturbed by other jobs on a shared CPU.
    """
    if clock not in ("wall", "process"):
        raise ValueError(f"clock must be 'wall' or 'process', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time
    cuda = x.is_cuda
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, model in models.items():
                if cuda:
                    torch.cuda.synchronize(x.device)
                t0 = now()
                model(x)
                if cuda:
                    torch.cuda.synchronize(x.device)
                if i >= warmup:
                    times[name].append((now() - t0) * 1e3)
    return times
