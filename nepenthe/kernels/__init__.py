"""Counting kernels behind one dispatch: torch reference, C++/OpenMP, CUDA and Triton backends."""

from .count import count_states
from .dispatch import BACKENDS, BackendStatus, BackendUnavailable, available_backends, backend_status
from .fused import fused_activation, fused_activation_

__all__ = [
    "BACKENDS",
    "BackendStatus",
    "BackendUnavailable",
    "available_backends",
    "backend_status",
    "count_states",
    "fused_activation",
    "fused_activation_",
]
