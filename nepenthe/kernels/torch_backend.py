"""The ``torch`` backend: the reference counting and torch's own activations. Always available."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .jobs import CountJob, FusedJob
from .reference import count_states_reference

NAME = "torch"


def load() -> None:
    """Nothing to load: plain PyTorch."""


def device_problem(device: torch.device) -> str | None:
    return None


def count(job: CountJob) -> None:
    job.counts.add_(count_states_reference(job.x, job.thresholds, job.channel_dim, job.ignore_ties))


def activation(x: torch.Tensor, kind: str, params: dict[str, object]) -> torch.Tensor:
    """torch's own activation for a fused kind: the oracle for every fused kernel."""
    if kind == "relu":
        return F.relu(x)
    if kind == "hardtanh":
        return F.hardtanh(x, float(params["min_val"]), float(params["max_val"]))
    if kind == "leaky_relu":
        return F.leaky_relu(x, float(params["negative_slope"]))
    if kind == "gelu":
        return F.gelu(x, approximate=str(params.get("approximate", "none")))
    raise ValueError(f"unknown fused activation kind {kind!r}")


def fused_forward(job: FusedJob) -> None:
    count(job)
    job.y.copy_(activation(job.x, job.kind, job.params))
