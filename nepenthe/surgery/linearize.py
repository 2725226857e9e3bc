"""``linearize``: replace activation call sites by the per-channel affine map they act as (METHOD.md 2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..activations import activation_spec
from ..entropy import dominant_state, is_linearizable, seen_states
from ..profiler.callsites import activation_modules
from .affine import CallSiteDispatch, ChannelAffine, install_dispatch_reset

_CHANNELS_LAST_PRODUCERS = (nn.Linear, nn.LayerNorm)
_CHANNELS_FIRST_PRODUCERS = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


@dataclass
class SiteRecord:
    """What one linearized call site became."""

    name: str
    module_name: str
    call_index: int
    activation: str
    channels: int | None
    channel_dim: int
    source: str
    exact: bool
    state_histogram: dict[int, int] = field(default_factory=dict)
    states: list[int] | None = None
    note: str = ""


@dataclass
class LinearizeReport:
    """What :func:`linearize` did, one :class:`SiteRecord` per call site (printable; ``to_dict()`` for JSON)."""

    sites: list[SiteRecord]

    @property
    def approximate(self) -> list[str]:
        """Call sites whose replacement is not exactly the activation on the inputs seen."""
        return [s.name for s in self.sites if not s.exact]

    def to_dict(self) -> dict:
        return {"sites": [asdict(s) for s in self.sites], "approximate": self.approximate}

    def __str__(self) -> str:
        rows = [("layer", "activation", "C", "dim", "states (count per state)", "exact", "source")]
        for s in self.sites:
            hist = " ".join(f"{k}:{v}" for k, v in sorted(s.state_histogram.items())) or "-"
            rows.append(
                (
                    s.name,
                    s.activation,
                    str(s.channels or "-"),
                    str(s.channel_dim),
                    hist,
                    "yes" if s.exact else "NO",
                    s.source,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        notes = [f"  {s.name}: {s.note}" for s in self.sites if s.note]
        return "\n".join([f"linearized {len(self.sites)} call site(s)", *lines, *(["notes:"] + notes if notes else [])])


def _parse_site(name: str) -> tuple[str, int, bool]:
    if "@" in name:
        module_name, _, index = name.rpartition("@")
        if not index.isdigit():
            raise ValueError(f"layers: {name!r} is not NAME or NAME@k")
        return module_name, int(index), True
    return name, 0, False


def _unknown(name: str, known: Iterable[str], where: str) -> ValueError:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; close matches: {close}" if close else f"; known layers: {known[:12]}{' ...' if len(known) > 12 else ''}"
    return ValueError(f"layers: no layer named {name!r} {where}{hint}")


def infer_channel_dim(model: nn.Module, module_name: str) -> int:
    """Channel dim of an activation's input, guessed from the layer registered before it.

    After a Linear or LayerNorm the channels are the last dim (token tensors); otherwise dim 1 (feature maps).
    """
    previous: nn.Module | None = None
    for name, module in model.named_modules():
        if name == module_name:
            break
        if isinstance(module, _CHANNELS_LAST_PRODUCERS + _CHANNELS_FIRST_PRODUCERS):
            previous = module
    return -1 if isinstance(previous, _CHANNELS_LAST_PRODUCERS) else 1


def _per_channel(value: float | torch.Tensor, channels: int) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=torch.float64).detach().flatten()
    return v.expand(channels) if v.numel() == 1 else v


def affine_from_states(module: nn.Module, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per-channel ``(scale, shift, exact)`` of activation ``module`` when channel ``c`` stays in ``states[c]``."""
    spec = activation_spec(module)
    if spec is None:
        raise ValueError(f"{type(module).__name__} is not an activation nepenthe knows; see register_activation")
    pieces = spec.pieces(module)
    channels = states.shape[0]
    if states.numel() and int(states.max()) >= len(pieces):
        raise ValueError(f"{type(module).__name__} has {len(pieces)} states, got state {int(states.max())}")
    scale = torch.zeros(channels, dtype=torch.float64)
    shift = torch.zeros(channels, dtype=torch.float64)
    exact = True
    for k, piece in enumerate(pieces):
        mask = states == k
        if not bool(mask.any()):
            continue
        scale[mask] = _per_channel(piece.slope, channels)[mask]
        shift[mask] = _per_channel(piece.intercept, channels)[mask]
        exact = exact and piece.exact
    return scale.float(), shift.float(), exact


def _profile_parts(profile: object) -> tuple[dict[str, torch.Tensor] | None, dict[str, object]]:
    if profile is None:
        return None, {}
    if isinstance(profile, Mapping):
        counts = {}
        for name, c in profile.items():
            c = torch.as_tensor(c)
            if c.dim() != 2 or c.dtype.is_floating_point:
                raise ValueError(
                    f"profile: counts of {name!r} must be an integer (C, K) tensor, got {c.dtype} {tuple(c.shape)}"
                )
            counts[name] = c
        return counts, {}
    if hasattr(profile, "counts") and hasattr(profile, "layers"):
        return dict(profile.counts()), dict(profile.layers)
    raise TypeError(f"profile must be a nepenthe Profile or a dict name -> (C, K) counts, got {type(profile).__name__}")


def _install(
    model: nn.Module, module_name: str, call_index: int, calls: int | None, new: nn.Module, shared: bool
) -> None:
    parent_name, _, attr = module_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    current = getattr(parent, attr)
    if not shared:
        setattr(parent, attr, new)
        return
    if not isinstance(current, CallSiteDispatch):
        current = CallSiteDispatch(current, calls)
        setattr(parent, attr, current)
    elif calls is not None:
        current.calls = calls
    if str(call_index) in current.sites:
        raise ValueError(f"layers: {module_name}@{call_index} is already linearized")
    current.sites[str(call_index)] = new
    install_dispatch_reset(model)


def _site_activation(model: nn.Module, module_name: str, call_index: int) -> nn.Module:
    module = model.get_submodule(module_name)
    if isinstance(module, CallSiteDispatch):
        module = module.site_module(call_index)
    if isinstance(module, ChannelAffine):
        raise ValueError(f"layers: {module_name}@{call_index} is already linearized")
    return module


def linearize(
    model: nn.Module,
    layers: str | Iterable[str],
    profile: object = None,
    force: bool = False,
) -> tuple[nn.Module, LinearizeReport]:
    """Replace each named activation call site of ``model`` (in place) by the affine map it acts as.

    ``layers`` are call-site names (``features.2``, ``layer1.0.relu@1``; see ``nepenthe.profiler.callsites``).
    With ``profile`` (a :class:`nepenthe.Profile` or a dict name -> int64 ``(C, K)`` counts) each channel
    becomes the affine map of the one state it was seen in: identity (ReLU on), zero (ReLU off), or the piece's
    slope and intercept. A layer whose neurons saw several states is refused unless ``force=True`` (then each
    neuron takes its most frequent state, reported as approximate). Smooth activations (GELU, SiLU) become
    their sign-constant approximation, reported as approximate. Without a profile every named layer becomes
    the identity (the papers' behaviour), also reported.

    Usage (a sketch)::

        model, report = nepenthe.linearize(model, ["layer1.0.relu@0"], profile=prof)
        print(report)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    names = [layers] if isinstance(layers, str) else list(layers)
    if not all(isinstance(n, str) for n in names):
        raise TypeError("layers must be a layer name or an iterable of layer names (str)")
    if len(set(names)) != len(names):
        raise ValueError(f"layers: duplicate names in {names}")
    counts, infos = _profile_parts(profile)
    modules = activation_modules(
        model, lambda m: activation_spec(m) is not None or isinstance(m, (CallSiteDispatch, ChannelAffine))
    )
    # Calls per forward of each module, as a Profile saw them. Counts alone may name only some call sites of a
    # module (relu@0 and relu@1 of one called three times): there the dispatch counts calls without wrapping, and
    # the root model's pre-hook starts each forward at call 0.
    calls_per_module: dict[str, int] = {}
    for info in infos.values():
        calls_per_module[info.module_name] = max(calls_per_module.get(info.module_name, 0), info.call_index + 1)

    plans = []
    for name in names:
        if infos:
            if name not in infos:
                raise _unknown(name, infos, "in the profile")
            info = infos[name]
            module_name, call_index = info.module_name, info.call_index
            shared = calls_per_module[module_name] > 1
        else:
            if counts is not None and name not in counts:
                raise _unknown(name, counts, "in the profile counts")
            module_name, call_index, shared = _parse_site(name)
            if module_name not in modules:
                known = [n for n in modules] + [f"{n}@0" for n in modules]
                raise _unknown(name, known, "in the model")
        act = _site_activation(model, module_name, call_index)
        if activation_spec(act) is None:
            raise ValueError(f"layers: {name!r} is {type(act).__name__}, not an activation nepenthe knows")
        plans.append((name, module_name, call_index, shared, act))

    records = []
    replacements = []
    for name, module_name, call_index, shared, act in plans:
        info = infos.get(name)
        channel_dim = int(info.channel_dim) if info is not None and info.channel_dim is not None else None
        if channel_dim is None:
            channel_dim = infer_channel_dim(model, module_name)
        activation = type(act).__name__
        if counts is None:
            new = ChannelAffine(torch.tensor(1.0), torch.tensor(0.0), channel_dim, site=name, exact=False)
            rec = SiteRecord(
                name,
                module_name,
                call_index,
                activation,
                None,
                channel_dim,
                "identity (no profile)",
                False,
                note="no profile: replaced by identity without checking its states",
            )
        else:
            c = counts[name]
            try:
                ok = is_linearizable(c)
            except (ValueError, TypeError) as err:
                raise ValueError(f"profile: counts of {name!r}: {err}") from None
            if not ok and not force:
                multi = torch.nonzero(seen_states(c) != 1).flatten()
                shown = ", ".join(f"neuron {int(i)} counts {c[i].tolist()}" for i in multi[:3])
                raise ValueError(
                    f"layers: {name!r} is not linearizable per the profile: {multi.numel()} of {c.shape[0]} neurons "
                    f"saw zero or several states ({shown}); pass force=True to use each neuron's most frequent state"
                )
            states = dominant_state(c)
            try:
                scale, shift, exact = affine_from_states(act, states)
            except ValueError as err:
                raise ValueError(f"layers: {name!r}: {err}") from None
            hist = {int(k): int(v) for k, v in zip(*torch.unique(states, return_counts=True), strict=True)}
            note = "" if exact else "the activation is not affine on the state seen: sign-constant approximation"
            if not ok:
                exact = False
                note = "forced: some neurons saw several states; each takes its most frequent state"
            new = ChannelAffine(scale, shift, channel_dim, site=name, exact=exact, states=states.tolist())
            rec = SiteRecord(
                name,
                module_name,
                call_index,
                activation,
                c.shape[0],
                channel_dim,
                "profile" if infos else "counts",
                exact,
                hist,
                states.tolist(),
                note,
            )
        records.append(rec)
        replacements.append((module_name, call_index, calls_per_module.get(module_name), new, shared))
    for module_name, call_index, calls, new, shared in replacements:
        _install(model, module_name, call_index, calls, new, shared)
    return model, LinearizeReport(records)
