"""``nepenthe.profile``: per-call-site activation-state counts and entropy of any PyTorch model.

How it works: a forward pre-hook on every tracked activation module reads the activation's *input* (before
an in-place activation overwrites it) and adds its states into an int64 ``(C, K)`` tensor on the input's device
with :func:`nepenthe.count_states`. Nothing is synchronised with the host and no activation is stored. A
pre-hook on the root model resets the per-forward call counters that give call sites their names
(``NAME`` or ``NAME@k``, see :mod:`.callsites`). During the first forward pass, hooks on producer modules find
each layer's neuron dimension (:mod:`.channels`) and a ``TorchFunctionMode`` looks for functional activations
the hooks cannot see (:mod:`.functional`); both are removed after that pass.

Supported: eager mode on CPU and CUDA, ``torch.no_grad``/``torch.inference_mode``, training with backward,
autocast (the hook sees the real, autocast input dtype), channels_last, ``DistributedDataParallel`` (profile
the inner model or the wrapper; sum ranks with :meth:`Profile.all_reduce`), and ``torch.compile`` in hook mode
when the profile is created *before* compiling: the counting hook is excluded from compilation, so each
activation is a graph break (the compiled model stays correct, with smaller graphs). Not supported: fused mode
under ``torch.compile`` (fused mode is for eager execution), ``nn.DataParallel`` (its replicas run hooks in
parallel threads: use DDP), and calling submodules of the profiled model directly (call-site names are counted
per forward pass of the profiled model; a warning says when they change). Functional activations (``F.relu``)
are not counted: the first forward pass warns about them and :func:`nepenthe.prepare` turns them into modules.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..activations import ActivationSpec, activation_spec, computes_fused_kind
from ..entropy import LAYER_REDUCTIONS, is_linearizable, neuron_entropy, reduce_entropy
from ..kernels import count_states
from .callsites import site_name
from .channels import ProducerTracker, choose_channel_dim
from .functional import FunctionalCallDetector, ModuleStack, describe_unseen
from .fused import FusedCountingActivation, restore, swap_in
from .selection import ActivationSelection
from .state import STATE_FORMAT, check_state
from .table import Row, format_table

AGGREGATES = ("sum", "batch_mean")


@dataclass(frozen=True)
class LayerInfo:
    """One profiled layer (activation call site): the contract the surgeon and the orchestrator rely on.

    ``name`` is ``module_name`` or ``module_name@call_index``; ``thresholds`` the knees of its states
    (``K = len(thresholds) + 1``); ``channel_dim`` the non-negative dim of the activation input that holds
    the neurons.
    """

    name: str
    module_name: str
    call_index: int
    module: nn.Module
    spec: ActivationSpec
    thresholds: tuple[float, ...]
    channel_dim: int


class _Site:
    """The mutable record of one call site: its counts and, for ``aggregate="batch_mean"``, batch statistics."""

    def __init__(self, module_name: str, call_index: int, module: nn.Module, thresholds: tuple[float, ...],
                 channel_dim: int, counts: torch.Tensor, batch_mean: bool) -> None:  # fmt: skip
        self.module_name, self.call_index, self.module = module_name, call_index, module
        self.thresholds, self.channel_dim, self.counts = thresholds, channel_dim, counts
        self.batch = torch.zeros_like(counts) if batch_mean else None
        self.entropy_sum = torch.zeros(counts.shape[0], dtype=torch.float64, device=counts.device)
        self.batches = 0
        self.touched = False

    def target(self) -> torch.Tensor:
        """The tensor this forward pass counts into."""
        self.touched = True
        return self.counts if self.batch is None else self.batch

    def flush(self) -> None:
        """Close a batch (``batch_mean`` only): pool its counts and add its neuron entropies."""
        if self.batch is None or not self.touched:
            return
        self.counts += self.batch
        self.entropy_sum += neuron_entropy(self.batch)
        self.batches += 1
        self.batch.zero_()
        self.touched = False


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers (their hooks fire on the inner model)."""
    while True:
        if isinstance(model, nn.DataParallel):
            raise TypeError(
                "model: nn.DataParallel runs its replicas' hooks in parallel threads, which the per-forward call "
                "counters cannot follow; use DistributedDataParallel, or profile model.module on one device"
            )
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _new_counts(channels: int, states: int, device: torch.device) -> torch.Tensor:
    # Created outside inference mode: counts made under inference_mode could not be updated after it.
    with torch.inference_mode(False):
        return torch.zeros(channels, states, dtype=torch.int64, device=device)


class Profile:
    """Activation-state counts of a model, per call site. Made by :func:`profile`; see it for the arguments."""

    def __init__(
        self,
        model: nn.Module,
        activations: object = None,
        ignore_ties: bool = False,
        fused: bool = False,
        channel_dims: Mapping[str, int] | None = None,
        aggregate: str = "sum",
        warn_functional: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        if channel_dims is not None and not (
            isinstance(channel_dims, Mapping)
            and all(isinstance(k, str) and isinstance(v, int) for k, v in channel_dims.items())
        ):
            raise TypeError("channel_dims must be a mapping layer or module name -> int dim")
        self.model = _unwrap(model)
        self.ignore_ties = bool(ignore_ties)
        self.fused = bool(fused)
        self.aggregate = aggregate
        self._selection = ActivationSelection(activations)
        self._channel_dims = dict(channel_dims or {})
        self._modules: dict[str, nn.Module] = {
            name: m for name, m in self.model.named_modules() if self._selection.is_tracked(m)
        }
        if not self._modules:
            raise ValueError(
                f"{type(self.model).__name__} has no activation module that nepenthe tracks "
                f"(activations={activations!r}). If its forward calls functional activations (F.relu, torch.relu), "
                "rewrite them into modules first: model = nepenthe.prepare(model)."
            )
        self._sites: dict[tuple[str, int], _Site] = {}
        self._calls: dict[str, int] = {}
        self._max_calls: dict[str, int] = {}
        self._forwards = 0
        self._warn_functional = warn_functional
        self._detector: FunctionalCallDetector | None = None
        self._stack: ModuleStack | None = None
        self._handles: list = []
        self._swaps: list = []
        self._producers: ProducerTracker | None = ProducerTracker(self.model)
        self._handles.append(self.model.register_forward_pre_hook(self._forward_start))
        self._handles.append(self.model.register_forward_hook(self._forward_end, always_call=True))
        replacements: dict[int, nn.Module] = {}
        for name, module in self._modules.items():
            spec = activation_spec(module)
            if self.fused and computes_fused_kind(module) and module is not self.model:
                replacements[id(module)] = FusedCountingActivation(module, spec, self._fused_site(name, module))
            else:
                self._handles.append(module.register_forward_pre_hook(self._count_hook(name)))
        self._swaps = swap_in(self.model, replacements) if replacements else []

    # -- hooks ---------------------------------------------------------------------------------------------
    def _forward_start(self, module: nn.Module, args: tuple) -> None:
        self._calls.clear()
        if self.aggregate == "batch_mean":
            self._flush()
        if self._forwards == 0 and self._warn_functional and self._detector is None and not _compiling():
            self._stack = ModuleStack(self.model, lambda m: isinstance(m, FusedCountingActivation))
            self._detector = FunctionalCallDetector(self._selection.tracks_class, self._stack.current)
            self._detector.__enter__()

    def _forward_end(self, module: nn.Module, args: tuple, output: object) -> None:
        failed = sys.exc_info()[0] is not None  # torch runs always_call hooks inside its except block
        if self._detector is not None:
            self._detector.__exit__(None, None, None)
            self._stack.remove()
            calls, self._detector, self._stack = self._detector.calls, None, None
            if calls and not failed:
                warnings.warn(describe_unseen(calls), stacklevel=2)
        if failed:
            return
        self._forwards += 1
        if self._forwards == 1 and self._channel_dims:
            known = {s.module_name for s in self._sites.values()}
            known |= {f"{s.module_name}@{s.call_index}" for s in self._sites.values()}
            unknown = sorted(set(self._channel_dims) - known)
            if unknown:
                warnings.warn(
                    f"nepenthe.profile: channel_dims names {unknown} match no activation call site of the first "
                    "forward pass; use layer names (NAME or NAME@k) or module names",
                    stacklevel=2,
                )
        if self._producers is not None and self._sites:
            self._producers.remove()
            self._producers = None

    def _site(self, module_name: str, module: nn.Module, x: object) -> _Site:
        index = self._calls.get(module_name, 0)
        self._calls[module_name] = index + 1
        if index >= self._max_calls.get(module_name, 0):
            if index == 1 and self._forwards > 0:
                warnings.warn(
                    f"nepenthe.profile: {module_name} ran twice in one forward pass after a pass where it ran once; "
                    f"its layer {module_name!r} is now named {module_name + '@0'!r}. Layers are named by calls "
                    "per forward pass of the profiled model: call that model itself, not its submodules.",
                    stacklevel=2,
                )
            self._max_calls[module_name] = index + 1
        site = self._sites.get((module_name, index))
        if site is None:
            site = self._new_site(module_name, index, module, x)
        return site

    def _count_hook(self, module_name: str):
        @torch.compiler.disable
        def pre_hook(module: nn.Module, args: tuple) -> None:
            site = self._site(module_name, module, args[0] if args else None)
            count_states(
                args[0], site.thresholds, channel_dim=site.channel_dim, counts=site.target(),
                ignore_ties=self.ignore_ties,
            )  # fmt: skip

        return pre_hook

    def _fused_site(self, module_name: str, module: nn.Module):
        def site_for(x: torch.Tensor) -> tuple:
            site = self._site(module_name, module, x)
            return site.target(), site.thresholds, site.channel_dim, self.ignore_ties

        return site_for

    def _new_site(self, module_name: str, index: int, module: nn.Module, x: object) -> _Site:
        label = f"{module_name}@{index}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"nepenthe.profile: activation {label} ({type(module).__name__}) got {type(x).__name__} as its "
                "first positional input; only tensors passed positionally can be counted"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"nepenthe.profile: activation {label} ({type(module).__name__}) got a {x.dtype} input; "
                "activation states are defined for floating-point inputs only"
            )
        thresholds = self._selection.thresholds(module)
        dim = self._channel_dim(module_name, index, tuple(x.shape))
        site = _Site(module_name, index, module, thresholds, dim,
                     _new_counts(x.shape[dim] if x.dim() else 1, len(thresholds) + 1, x.device),
                     self.aggregate == "batch_mean")  # fmt: skip
        self._sites[(module_name, index)] = site
        return site

    def _channel_dim(self, module_name: str, index: int, shape: tuple[int, ...]) -> int:
        for key in (f"{module_name}@{index}", module_name):
            if key in self._channel_dims:
                dim = self._channel_dims[key]
                if not -len(shape) <= dim < max(len(shape), 1):
                    raise ValueError(f"channel_dims[{key!r}] = {dim} is out of range for an input of shape {shape}")
                return dim % max(len(shape), 1)
        if self._producers is not None:
            return choose_channel_dim(shape, self._producers.last)
        sibling = next((s for s in self._sites.values() if s.module_name == module_name), None)
        if sibling is not None and len(shape) > sibling.channel_dim:
            return sibling.channel_dim
        dim = choose_channel_dim(shape, None)
        if len(shape) > 2:
            warnings.warn(
                f"nepenthe.profile: activation {module_name}@{index} first ran after the first forward pass; "
                f"its neuron dim was guessed as {dim} for shape {shape}. Pass channel_dims={{...}} to set it.",
                stacklevel=3,
            )
        return dim

    # -- lifecycle -----------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Remove every hook and undo fused swaps: the model is left exactly as it was. Idempotent.

        The counts stay readable after removal.
        """
        for h in self._handles:
            h.remove()
        self._handles = []
        restore(self._swaps)
        self._swaps = []
        if self._producers is not None:
            self._producers.remove()
            self._producers = None
        if self._detector is not None:
            self._detector.__exit__(None, None, None)
            self._stack.remove()
            self._detector = self._stack = None

    def __enter__(self) -> Profile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- results -------------------------------------------------------------------------------------------
    def _flush(self) -> None:
        for site in self._sites.values():
            site.flush()

    def _name(self, site: _Site) -> str:
        return site_name(site.module_name, site.call_index, self._max_calls.get(site.module_name, 1))

    def _named_sites(self) -> dict[str, _Site]:
        if not self._sites:
            raise RuntimeError(
                "nepenthe.profile: no tracked activation has run yet; run forward passes of the model "
                "inside the profile before reading results"
            )
        self._flush()
        return {self._name(s): s for s in self._sites.values()}

    @property
    def layers(self) -> dict[str, LayerInfo]:
        """Every layer seen so far, in call order: name -> :class:`LayerInfo` (empty before any forward)."""
        return {
            self._name(s): LayerInfo(
                self._name(s),
                s.module_name,
                s.call_index,
                s.module,
                activation_spec(s.module),
                s.thresholds,
                s.channel_dim,
            )  # fmt: skip
            for s in self._sites.values()
        }

    def counts(self) -> dict[str, torch.Tensor]:
        """Layer name -> int64 ``(C, K)`` counts (a copy, on the device the activations ran on)."""
        return {name: s.counts.clone() for name, s in self._named_sites().items()}

    def entropy(self) -> dict[str, torch.Tensor]:
        """Layer name -> float64 ``(C,)`` neuron entropy in bits.

        ``aggregate="sum"``: the entropy of the pooled counts (exact). ``"batch_mean"``: the mean over forward
        passes of each pass's neuron entropy (EGP/EASIER's estimate).
        """
        out = {}
        for name, s in self._named_sites().items():
            if self.aggregate == "batch_mean":
                out[name] = s.entropy_sum / max(s.batches, 1)
            else:
                out[name] = neuron_entropy(s.counts)
        return out

    def layer_entropy(self, reduction: str = "mean") -> dict[str, float]:
        """Layer name -> layer entropy: ``"mean"`` over neurons, ``"sum"``, or ``"nonconstant_mean"``."""
        if reduction not in LAYER_REDUCTIONS:
            raise ValueError(f"reduction must be one of {LAYER_REDUCTIONS}, got {reduction!r}")
        return {name: reduce_entropy(h, reduction) for name, h in self.entropy().items()}

    def linearizable(self) -> list[str]:
        """Names (call order) of the layers where every neuron was seen in exactly one state."""
        return [name for name, s in self._named_sites().items() if is_linearizable(s.counts)]

    def summary(self) -> str:
        """A readable table: layer, activation, C, samples per neuron, mean entropy, % on, linearizable.

        "% on" is the share of values above the first threshold (ReLU: positive inputs).
        """
        entropy = self.layer_entropy("mean")
        rows = []
        for name, s in self._named_sites().items():
            counts = s.counts.cpu()
            total = int(counts.sum())
            rows.append(Row(name, type(s.module).__name__, counts.shape[0], int(counts.sum(dim=1).max()),
                            entropy[name], float(counts[:, 1:].sum()) / max(total, 1),
                            is_linearizable(counts)))  # fmt: skip
        title = (
            f"nepenthe profile of {type(self.model).__name__}: {self._forwards} forward pass(es), "
            f"entropy = {'pooled counts' if self.aggregate == 'sum' else 'mean of per-batch entropies'}"
        )
        return format_table(rows, title)

    def display(self) -> None:
        """Print :meth:`summary`."""
        print(self.summary())

    def __repr__(self) -> str:
        return (
            f"Profile({type(self.model).__name__}, {len(self._sites)} layers, {self._forwards} forwards, "
            f"fused={self.fused}, aggregate={self.aggregate!r})"
        )

    # -- state ---------------------------------------------------------------------------------------------
    def _fingerprint(self) -> list[tuple[str, str]]:
        return [(name, type(m).__name__) for name, m in self._modules.items()]

    def state_dict(self) -> dict:
        """Everything needed to restore or merge these results: layer metadata and counts (tensors copied)."""
        layers = {}
        for name, s in self._named_sites().items():
            layers[name] = {
                "module_name": s.module_name,
                "call_index": s.call_index,
                "activation": type(s.module).__name__,
                "thresholds": s.thresholds,
                "channel_dim": s.channel_dim,
                "counts": s.counts.detach().clone(),
                "entropy_sum": s.entropy_sum.detach().clone(),
                "batches": s.batches,
            }
        return {
            "format": STATE_FORMAT,
            "model": self._fingerprint(),
            "ignore_ties": self.ignore_ties,
            "aggregate": self.aggregate,
            "forwards": self._forwards,
            "layers": layers,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Replace this profile's results by ``state`` (from :meth:`state_dict` of a profile of the same model).

        Raises ``ValueError`` when ``state`` comes from a different model (other activation modules, layer
        names, shapes or thresholds) or was made with other ``ignore_ties``/``aggregate`` settings.
        """
        self._absorb(state, add=False)

    def merge(self, other: Profile | Mapping) -> Profile:
        """Add the counts of ``other`` (a :class:`Profile` of the same model, or its ``state_dict``). Returns self."""
        self._absorb(other.state_dict() if isinstance(other, Profile) else other, add=True)
        return self

    def _absorb(self, state: Mapping, add: bool) -> None:
        self._flush()
        check_state(state, self)
        layers = state["layers"]
        for entry in layers.values():
            key = (entry["module_name"], entry["call_index"])
            site = self._sites.get(key)
            if site is None:
                site = self._site_from_state(entry)
            counts = entry["counts"].to(site.counts.device)
            entropy_sum = entry["entropy_sum"].to(site.entropy_sum.device, torch.float64)
            if add:
                site.counts += counts
                site.entropy_sum += entropy_sum
                site.batches += int(entry["batches"])
            else:
                site.counts.copy_(counts)
                site.entropy_sum.copy_(entropy_sum)
                site.batches = int(entry["batches"])
        if not add:
            for site in self._sites.values():
                if self._name(site) not in layers:
                    raise ValueError(f"state dict has no layer {self._name(site)!r}, which this profile has")
        self._forwards = (self._forwards if add else 0) + int(state.get("forwards", 0))

    def _site_from_state(self, entry: Mapping) -> _Site:
        module = self._modules[entry["module_name"]]
        counts = entry["counts"]
        device = next((s.counts.device for s in self._sites.values()), None) or _model_device(self.model)
        site = _Site(entry["module_name"], int(entry["call_index"]), module, tuple(entry["thresholds"]),
                     int(entry["channel_dim"]), _new_counts(counts.shape[0], counts.shape[1], device),
                     self.aggregate == "batch_mean")  # fmt: skip
        self._sites[(site.module_name, site.call_index)] = site
        return site

    def reset(self) -> None:
        """Zero every count (layers, names and neuron dims are kept)."""
        for s in self._sites.values():
            s.counts.zero_()
            s.entropy_sum.zero_()
            s.batches = 0
            if s.batch is not None:
                s.batch.zero_()
            s.touched = False
        self._forwards = 0

    def all_reduce(self, group: object = None) -> None:
        """Sum the counts over the ranks of ``group`` (``torch.distributed``); every rank then holds the total.

        Call it once, after profiling (a second call would add the totals again). Layers seen on some ranks
        only are created on the others. One collective for the metadata and one for all counts.
        """
        from .distributed import all_reduce_profile

        self._flush()
        all_reduce_profile(self, group)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def profile(
    model: nn.Module,
    activations: object = None,
    ignore_ties: bool = False,
    fused: bool = False,
    channel_dims: Mapping[str, int] | None = None,
    aggregate: str = "sum",
    warn_functional: bool = True,
) -> Profile:
    """Count the states of every activation call site of ``model`` during the forward passes that follow.

    - ``activations``: None for every activation nepenthe knows (ReLU, ReLU6, LeakyReLU, PReLU, Hardtanh, ELU,
      GELU, SiLU, Mish, Hardswish, Hardsigmoid, timm's GELU, GELUTanh and QuickGELU, and registered ones); a list
      of classes or names to track only those (a name takes every known class of that name: ``"gelu"`` is torch's
      and timm's); a mapping ``class -> thresholds`` to add a user's activation (registered for you) or override
      thresholds.
    - ``ignore_ties``: leave values exactly at a threshold out of the counts (NEPENTHE's "don't care").
    - ``fused``: swap ReLU/ReLU6/Hardtanh/LeakyReLU/GELU modules (torch's, and timm's GELU and GELUTanh; not
      subclasses) for fused kernels that compute the activation and count in one pass (eager mode only; other
      activations keep hooks; swapped back on exit). ReLU, ReLU6, Hardtanh and LeakyReLU give torch's outputs bit
      for bit; GELU agrees within float rounding (float32: about 1e-6 relative), so what follows a GELU can differ
      in its last bits: a later value that sits on a knee (0 for a ReLU or GELU) may land on its other side, so
      later layers' counts can differ from hook mode's by a few, and that element's gradient can change. Hook mode
      leaves the model's computation untouched. Where a backend measured torch's activation and a count faster
      than its kernel, fused mode runs those (on CPU: GELU in bfloat16 and float64, and in float32 with AVX2-only
      kernels).
    - ``channel_dims``: override the neuron dim per layer (``"layer1.0.relu@1"``) or per module (all its calls).
    - ``aggregate``: ``"sum"`` pools counts (exact entropy); ``"batch_mean"`` averages per-forward entropies as
      EGP/EASIER do (only to reproduce their numbers).
    - ``warn_functional``: watch the first forward pass for functional activations (``F.relu``) that cannot be
      counted and warn about them (use :func:`nepenthe.prepare` to turn them into modules).

    Layers are activation *call sites*: ``NAME``, or ``NAME@k`` for a module called several times per forward.
    Call the model (or its DDP / compiled wrapper) itself: the per-forward call counter resets when the root
    model's forward starts. See the module docstring for the supported settings.

    Usage (a sketch)::

        with nepenthe.profile(model) as prof:
            for x, _ in loader:
                model(x)
        prof.layer_entropy()["layer1.0.relu@1"]  # 0.93
        print(prof.summary())
    """
    return Profile(model, activations, ignore_ties, fused, channel_dims, aggregate, warn_functional)
