"""What a finished run leaves besides its report: the kept model, replayable on a fresh architecture.

``kept_model.pt`` holds the linearization steps (call sites and the counts that justified them, in order) and
the weights; :func:`load_kept` replays the steps on a fresh instance of the dense architecture and loads the
weights, so no model class is pickled. ``shrunk_model.pt`` is the whole shrunk module (``torch.save``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError, atomic_save

KEPT_NAME = "kept_model.pt"
SHRUNK_NAME = "shrunk_model.pt"


def save_kept(run_dir: str | Path, steps: list[dict[str, Any]], model: nn.Module, extra: dict[str, Any]) -> Path:
    """Write ``run_dir/kept_model.pt``: linearization ``steps``, ``model``'s weights and the run's ``extra``."""
    path = Path(run_dir) / KEPT_NAME
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": "nepenthe-kept", "steps": steps, "state_dict": state, "extra": extra}, path)
    return path


def read_kept(run_dir: str | Path) -> dict[str, Any]:
    """The contents of ``run_dir/kept_model.pt`` (a clear error when missing or not ours)."""
    path = Path(run_dir) / KEPT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run in {run_dir} has not finished (run `nepenthe prune`)")
    try:
        kept = torch.load(path, map_location="cpu", weights_only=False)  # our own file: steps hold plain records
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path} is corrupt: {err}") from err
    if not isinstance(kept, dict) or kept.get("format") != "nepenthe-kept":
        raise CheckpointError(f"{path} is not a nepenthe kept-model file")
    return kept


def load_kept(run_dir: str | Path, template: nn.Module) -> nn.Module:
    """The kept model of a run: ``template`` (a fresh dense model, copied) with the steps replayed and weights."""
    import nepenthe

    kept = read_kept(run_dir)
    model = copy.deepcopy(template)
    for step in kept["steps"]:
        nepenthe.linearize(model, step["layers"], profile=step["counts"])
    try:
        model.load_state_dict(kept["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{Path(run_dir) / KEPT_NAME} does not fit the model given: {err}") from err
    return model.eval()
