"""The orchestrator: the NEPENTHE loop, its budget and masks, checkpoints, data, models, reports.

It only sequences the profiler (``nepenthe.profile``), the pruner (:mod:`.pruner`) and the surgeon
(``nepenthe.linearize``, ``nepenthe.shrink``). Models by name live in :mod:`.models` (not imported here: it
imports torchvision).
"""

from .budget import LayerBudget, allocate_budget, layer_irrelevance, neuron_irrelevance
from .checkpoint import CheckpointError
from .config import NepentheConfig
from .data import DataBundle, DatasetMissing, load_dataset
from .loop import RunResult, run_nepenthe
from .masks import PruningMasks
from .prunable import feeding_layers
from .report import read_report, rebuild_plots, summary_table

__all__ = [
    "CheckpointError",
    "DataBundle",
    "DatasetMissing",
    "LayerBudget",
    "NepentheConfig",
    "PruningMasks",
    "RunResult",
    "allocate_budget",
    "feeding_layers",
    "layer_irrelevance",
    "load_dataset",
    "neuron_irrelevance",
    "read_report",
    "rebuild_plots",
    "run_nepenthe",
    "summary_table",
]
