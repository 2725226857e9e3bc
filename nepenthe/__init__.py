"""nepenthe: entropy-based pruning that makes neural networks shallower (NEPENTHE).

Four parts, each behind small public functions:

- kernels: :func:`count_states`, :func:`fused_activation`, :func:`fused_activation_` (exact activation-state counts
  on every backend);
- profiler: :func:`profile` (per-call-site state counts and entropy of any model);
- surgery: :func:`linearize`, :func:`shrink` (remove zero-entropy activations and merge the layers around them);
- orchestrator: the NEPENTHE pruning loop and the ``nepenthe`` command line.
"""

from .activations import ActivationSpec, Piece, activation_spec, register_activation
from .entropy import dominant_state, is_linearizable, layer_entropy, neuron_entropy
from .kernels import available_backends, backend_status, count_states, fused_activation, fused_activation_
from .orchestrator import NepentheConfig, RunResult, run_nepenthe
from .profiler import LayerInfo, Profile, prepare, profile
from .surgery import LinearizeReport, ShrinkReport, apply_plan, linearize, load_plan, save_plan, shrink

__version__ = "0.1.0"

__all__ = [
    "ActivationSpec",
    "LayerInfo",
    "LinearizeReport",
    "NepentheConfig",
    "Piece",
    "Profile",
    "RunResult",
    "ShrinkReport",
    "activation_spec",
    "apply_plan",
    "available_backends",
    "backend_status",
    "count_states",
    "dominant_state",
    "fused_activation",
    "fused_activation_",
    "is_linearizable",
    "layer_entropy",
    "linearize",
    "load_plan",
    "neuron_entropy",
    "prepare",
    "profile",
    "register_activation",
    "run_nepenthe",
    "save_plan",
    "shrink",
]
