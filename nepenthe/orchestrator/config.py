"""Every choice of a NEPENTHE run in one dataclass, with the paper's values and a short practical schedule."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from ..entropy import LAYER_REDUCTIONS

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
MAGNITUDES = ("layer", "neuron")

# Fields that do not change what a run computes: a resumed run may change them freely.
_RUNTIME_FIELDS = frozenset({"device", "out_dir", "progress", "max_iterations", "num_workers", "latency_repeats"})


@dataclass
class NepentheConfig:
    """How a NEPENTHE run prunes, fine-tunes and stops (METHOD.md sections 3-4).

    Example::

        >>> cfg = NepentheConfig(zeta=0.5, delta=1.0, finetune_epochs=2)
        >>> paper = NepentheConfig.from_preset("paper")
    """

    zeta: float = 0.5
    """Fraction of the remaining prunable weights removed per iteration (the budget B = zeta * sum ||w||_0)."""
    delta: float = 1.0
    """Largest accuracy drop from the dense model, in percentage points, that an iteration may cause."""
    max_iterations: int = 10
    """Iteration cap (each iteration: profile, linearize, prune, fine-tune, evaluate)."""
    finetune_epochs: int = 2
    dense_epochs: int = 5
    """Epochs to train the dense model when none is given (0: use the model as it comes)."""
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    """Learning-rate schedule inside each training phase: constant, cosine, or step (x0.1 at milestones)."""
    milestones: tuple[float, ...] = (0.5, 0.75)
    """For ``schedule="step"``: fractions of the phase's epochs where the lr is multiplied by 0.1."""
    dense_lr: float | None = None
    """Learning rate of dense training (default: ``lr``)."""
    batch_size: int = 128
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs/nepenthe"
    train_subset: int | None = None
    """Use only this many training samples (a fixed random subset drawn from ``seed``); None: all."""
    test_subset: int | None = None
    profile_subset: int | None = None
    """Profile on this many training samples (None: the whole training set, as the paper does)."""
    ignore_ties: bool = False
    """Leave pre-activations exactly at a knee out of the counts (NEPENTHE's "don't care")."""
    layer_reduction: str = "mean"
    """How neuron entropies make a layer entropy: mean, sum, or nonconstant_mean."""
    magnitude: str = "layer"
    """Irrelevance uses the layer's mean |w| (EGP) or per-neuron mean |w| weighted by neuron entropy (NEPENTHE)."""
    finalize_linearize: bool = True
    """After the loop, linearize the zero-entropy layers of the kept model if that keeps it within delta."""
    num_workers: int = 0
    latency_repeats: int = 50
    """Timed forward passes per latency measurement of the final models (median reported)."""
    progress: bool = True
    preset: str = "default"

    def __post_init__(self) -> None:
        self.milestones = tuple(float(m) for m in self.milestones)
        _check_range("zeta", self.zeta, 0.0, 1.0, low_open=True)
        _check_range("delta", self.delta, 0.0, 100.0)
        for name in ("max_iterations", "batch_size", "eval_batch_size", "latency_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("finetune_epochs", "dense_epochs", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset", "profile_subset"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}")
        if self.lr <= 0 or (self.dense_lr is not None and self.dense_lr <= 0):
            raise ValueError(f"lr and dense_lr must be > 0, got lr={self.lr}, dense_lr={self.dense_lr}")
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("layer_reduction", self.layer_reduction, LAYER_REDUCTIONS)
        _check_choice("magnitude", self.magnitude, MAGNITUDES)

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> NepentheConfig:
        """A named preset: ``"default"`` (short practical schedule) or ``"paper"`` (METHOD.md values).

        ``overrides`` replace single fields, e.g. ``NepentheConfig.from_preset("paper", zeta=0.25)``.
        """
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        values = {**PRESETS[name], **overrides, "preset": name}
        return cls(**values)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able values of every field."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> NepentheConfig:
        """The config written by :meth:`to_dict`; unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown NepentheConfig fields: {unknown}")
        return cls(**values)

    def fingerprint(self) -> str:
        """A hash of the fields that change what a run computes (not device, out_dir, progress, iteration cap)."""
        relevant = {k: v for k, v in self.to_dict().items() if k not in _RUNTIME_FIELDS}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: NepentheConfig) -> list[str]:
        """Names of the computation-relevant fields in which ``other`` differs from this config."""
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(k for k in mine if k not in _RUNTIME_FIELDS and mine[k] != theirs.get(k))


PRESETS: dict[str, dict[str, object]] = {
    "default": {},
    # METHOD.md section 4 (EASIER appendix, CIFAR-10 ResNet-18): SGD 0.9, lr 0.1, wd 1e-4, batch 128,
    # 160 epochs with lr x0.1 at 80 and 120; zeta 0.5 for ResNet-18.
    "paper": {
        "zeta": 0.5,
        "delta": 1.0,
        "max_iterations": 50,
        "finetune_epochs": 160,
        "dense_epochs": 160,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "step",
        "milestones": (0.5, 0.75),
        "batch_size": 128,
        "magnitude": "neuron",
        "layer_reduction": "nonconstant_mean",
    },
}


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
