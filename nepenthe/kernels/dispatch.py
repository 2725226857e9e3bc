"""The one place that chooses a counting backend.

Order of preference by device: CPU tensors use the C++/OpenMP extension (``cpu``), CUDA tensors the CUDA
extension (``cuda``) then ``triton``; ``torch`` (the reference) is the fallback everywhere. ``backend=`` or the
``NEPENTHE_BACKEND`` environment variable forces one; a forced backend that cannot run raises with the reason.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import torch

BACKENDS = ("torch", "cpu", "cuda", "triton")
_MODULES = {
    "torch": "nepenthe.kernels.torch_backend",
    "cpu": "nepenthe.kernels.cpu_backend",
    "cuda": "nepenthe.kernels.cuda_backend",
    "triton": "nepenthe.kernels.triton_backend",
}
_PREFERENCE = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}


class BackendUnavailable(RuntimeError):
    """A backend that was asked for cannot run here; the message says why."""


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend loaded in this process, and why not if it did not."""

    name: str
    loaded: bool
    reason: str


_loaded: dict[str, ModuleType | BackendStatus] = {}


def _load(name: str) -> ModuleType | BackendStatus:
    if name not in _loaded:
        try:
            module = importlib.import_module(_MODULES[name])
            module.load()
            _loaded[name] = module
        except Exception as err:  # noqa: BLE001 - any failure to load is reported, never raised at import
            _loaded[name] = BackendStatus(name, False, f"{type(err).__name__}: {err}")
    return _loaded[name]


def backend_status() -> list[BackendStatus]:
    """Every backend with whether it loaded here and, if not, why (what ``nepenthe doctor`` prints)."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    out = []
    for name in BACKENDS:
        got = _load(name)
        if isinstance(got, BackendStatus):
            out.append(got)
            continue
        problems = {d.type: got.device_problem(d) for d in devices}
        usable = [d for d, p in problems.items() if p is None]
        notes = [f"runs on {', '.join(usable)}"] if usable else []
        notes += [f"not on {d}: {p}" for d, p in problems.items() if p is not None]
        build_note = getattr(got, "build_note", None)
        if build_note is not None:
            notes.append(build_note())
        out.append(BackendStatus(name, True, "; ".join(notes)))
    return out


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Names of the backends that can count tensors on ``device`` (all devices if None)."""
    names = []
    for name in BACKENDS:
        got = _load(name)
        if isinstance(got, BackendStatus):
            continue
        if device is None or got.device_problem(torch.device(device)) is None:
            names.append(name)
    return names


# Successful choices per (device, request), each with the _loaded table it was made from: a table replaced
# since (tests swap in a fresh one to reload the extensions) invalidates it.
_chosen: dict[tuple[torch.device, str | None], tuple[dict[str, ModuleType | BackendStatus], ModuleType]] = {}

ENV_VAR = "NEPENTHE_BACKEND"
# os.environ.get encodes the key on every call (about 0.5 us, a tenth of a small count's Python cost). The
# mapping os.environ keeps in step with the process environment, looked up with the key encoded once, gives the
# same answer; on an interpreter whose os.environ lacks it, the public lookup is used.
_ENV_DATA = getattr(os.environ, "_data", None)
try:
    _ENV_KEY = os.environ.encodekey(ENV_VAR)  # type: ignore[attr-defined]
    _ENV_DECODE = os.environ.decodevalue  # type: ignore[attr-defined]
except AttributeError:
    _ENV_DATA = None


def _env_backend() -> str | None:
    """The backend ``NEPENTHE_BACKEND`` forces, or None (unset or empty); read afresh on every call."""
    if isinstance(_ENV_DATA, dict):
        raw = _ENV_DATA.get(_ENV_KEY)
        return (_ENV_DECODE(raw) or None) if raw is not None else None
    return os.environ.get(ENV_VAR) or None


def select_backend(device: torch.device, backend: str | None) -> ModuleType:
    """The backend module to run on ``device``: the one asked for (or forced by env), else the best loaded.

    Called on every count, so successful choices are remembered per (device, request) while the table of
    loaded backends they were made from is still the current one (a test that replaces ``_loaded`` starts
    afresh), except where the backend's ``choice_is_stable(device)`` says its answer can change (Triton on CPU
    tensors runs only while its interpreter is switched on).
    """
    requested = backend if backend is not None else _env_backend()
    key = (device, requested)
    hit = _chosen.get(key)
    if hit is not None and hit[0] is _loaded:
        return hit[1]
    chosen = _select(device, requested)
    stable = getattr(chosen, "choice_is_stable", None)
    if stable is None or stable(device):  # a choice that hangs on the environment is made afresh each time
        _chosen[key] = (_loaded, chosen)
    return chosen


def _select(device: torch.device, requested: str | None) -> ModuleType:
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {requested!r}")
        got = _load(requested)
        if isinstance(got, BackendStatus):
            raise BackendUnavailable(f"backend {requested!r} is not available: {got.reason}")
        problem = got.device_problem(device)
        if problem is not None:
            raise BackendUnavailable(f"backend {requested!r} cannot run on {device}: {problem}")
        return got
    for name in _PREFERENCE.get(device.type, ("torch",)):
        got = _load(name)
        if not isinstance(got, BackendStatus) and got.device_problem(device) is None:
            return got
    return _load("torch")  # type: ignore[return-value]
