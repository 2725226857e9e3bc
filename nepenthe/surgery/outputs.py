"""Comparing two models' outputs: one tensor, or the tensors of lists, tuples and dicts (a feature extractor's)."""

from __future__ import annotations

import torch


def tensor_leaves(out: object) -> list[torch.Tensor]:
    """The tensors of a model's output, in order: one tensor, or those in (nested) lists, tuples and dicts (a
    feature extractor's maps)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for key in out for t in tensor_leaves(out[key])]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in tensor_leaves(item)]
    return []


def compare_outputs(ya: object, yb: object) -> tuple[float, float]:
    """Max absolute difference of two outputs' tensors, and the max over them of that tensor's difference relative
    to its own largest value (inf where their tensors or shapes differ)."""
    la, lb = tensor_leaves(ya), tensor_leaves(yb)
    if len(la) != len(lb) or any(a.shape != b.shape for a, b in zip(la, lb, strict=True)):
        return float("inf"), float("inf")
    worst_abs = worst_rel = 0.0
    for a, b in zip(la, lb, strict=True):
        diff = float((a.to(torch.float64) - b.to(torch.float64)).abs().max()) if a.numel() else 0.0
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(a.abs().max()) if a.numel() else 0.0, 1e-30))
    return worst_abs, worst_rel
