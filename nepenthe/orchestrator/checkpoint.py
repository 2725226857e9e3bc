"""Per-iteration checkpoints, written atomically, and refused with a clear reason when they do not fit.

A checkpoint is written to ``NAME.tmp`` and then renamed over ``NAME`` (``os.replace``, atomic on POSIX), so a
kill at any moment leaves either the previous complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "nepenthe-checkpoint"
VERSION = 1
_NAME = re.compile(r"^iter_(\d{4,})\.pt$")
REQUIRED = (
    "iteration",
    "config",
    "config_fingerprint",
    "architecture",
    "model",
    "masks",
    "linearized",
    "history",
    "dense_accuracy",
    "rng",
)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: the message names the file and what is wrong."""


def checkpoint_path(directory: str | Path, iteration: int) -> Path:
    """Where the checkpoint of ``iteration`` lives (iteration 0: the dense model)."""
    return Path(directory) / f"iter_{iteration:04d}.pt"


def list_checkpoints(directory: str | Path) -> dict[int, Path]:
    """Iteration -> checkpoint file, for every complete checkpoint in ``directory`` (temporary files ignored)."""
    folder = Path(directory)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """The state of every random generator a run uses (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], directory: str | Path) -> Path:
    """Write ``state`` (which must hold :data:`REQUIRED`) as the checkpoint of ``state["iteration"]``."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    path = checkpoint_path(directory, int(state["iteration"]))
    atomic_save({"format": FORMAT, "version": VERSION, **state}, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check one checkpoint; :class:`CheckpointError` names the file and the problem."""
    path = Path(path)
    try:
        # Checkpoints hold RNG states and plain Python records besides tensors: our own files, fully trusted.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"checkpoint {path} is corrupt or not a nepenthe checkpoint: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a nepenthe checkpoint (no '{FORMAT}' format tag)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {state.get('version')}, expected {VERSION}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it lacks {missing}")
    expected = _NAME.match(path.name)
    if expected and int(expected.group(1)) != state["iteration"]:
        raise CheckpointError(f"checkpoint {path} holds iteration {state['iteration']}, its name says otherwise")
    return state


def load_state_dict_file(model: torch.nn.Module, path: str | Path, what: str = "model") -> None:
    """Load the state dict saved at ``path`` (``torch.save(model.state_dict(), path)``) into ``model``, read with
    ``weights_only=True``; :class:`CheckpointError` names the file and the problem: it does not exist, it is not a
    state dict (corrupt, or another pickled object), or its names and shapes do not fit ``what``."""
    path = Path(path)
    hint = "save one with torch.save(model.state_dict(), path)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"state dict {path} does not exist") from err
    except pickle.UnpicklingError as err:  # not a pickle, or objects weights_only refuses (a module, a run's state)
        raise CheckpointError(
            f"{path} is not a state dict (it may be corrupt, a pickled model, or a nepenthe run's checkpoint): {hint}"
        ) from err
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"state dict {path} is corrupt ({type(err).__name__}: {_first_line(err)})") from err
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict (names to tensors): {hint}")
    problems = _misfit(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"state dict {path} does not fit the {what}: {'; '.join(problems)}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as err:  # e.g. an entry that is not a tensor
        details = " ".join(str(err).split())  # torch's message spans lines: the reason follows its first
        raise CheckpointError(f"state dict {path} does not fit the {what}: {details[:400]}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def _misfit(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``got`` from loading where ``want`` is expected: missing and unexpected names, other shapes."""

    def few(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [
        f"{k} {tuple(got[k].shape)} for {tuple(want[k].shape)}"
        for k in want
        if k in got
        and isinstance(got[k], torch.Tensor)
        and isinstance(want[k], torch.Tensor)
        and got[k].shape != want[k].shape
    ]
    out = []
    if missing:
        out.append(f"{len(missing)} of its {len(want)} entries missing ({few(missing)})")
    if unexpected:
        out.append(f"{len(unexpected)} unexpected ({few(unexpected)})")
    if shapes:
        out.append(f"{len(shapes)} of other shapes ({few(shapes)})")
    return out
