"""What each activation's states are, and what affine map each state is.

A state is one linear piece of an activation (METHOD.md section 1). The profiler reads the thresholds that
separate the pieces; the surgeon reads the affine map of the one piece a neuron stays in. Both ask this module,
so a user's own activation registered here is understood by every part of nepenthe.

timm's own activation classes (``timm.layers.GELU``, ``GELUTanh``, ``QuickGELU``, and its fallbacks for old
torch versions) are known too, by module and class name: they join the registry once the user has imported timm,
so nepenthe never imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import fx, nn

Scalar = float | torch.Tensor


@dataclass(frozen=True)
class Piece:
    """One state of an activation as the affine map ``y = slope * x + intercept``.

    ``slope`` is a float or a per-channel tensor (PReLU). ``exact`` is False where the activation is not
    affine on this piece (GELU, SiLU, the middle of Hardswish): replacing it is then an approximation.
    """

    slope: Scalar
    intercept: Scalar
    exact: bool = True


@dataclass(frozen=True)
class ActivationSpec:
    """How nepenthe understands one activation class.

    ``thresholds(module)`` gives the strictly increasing knees that split the input axis into states;
    ``pieces(module)`` gives one :class:`Piece` per state (``len(thresholds) + 1`` of them);
    ``fused_kind`` names the fused counting kernel that computes this activation, or None;
    ``fixed_params``, where given, are that kernel's parameters for every module of the class (a class without
    attributes that say them, such as timm's ``GELUTanh``).
    """

    thresholds: Callable[[nn.Module], tuple[float, ...]]
    pieces: Callable[[nn.Module], list[Piece]]
    fused_kind: str | None = None
    fixed_params: Mapping[str, object] | None = field(default=None, compare=False)

    def fused_params(self, module: nn.Module) -> dict[str, object]:
        """Keyword parameters of the fused kernel for ``module`` (slopes, knees, GELU approximation)."""
        if self.fixed_params is not None:
            return dict(self.fixed_params)
        if self.fused_kind == "hardtanh":
            return {"min_val": float(module.min_val), "max_val": float(module.max_val)}
        if self.fused_kind == "leaky_relu":
            return {"negative_slope": float(module.negative_slope)}
        if self.fused_kind == "gelu":
            return {"approximate": module.approximate}
        return {}


def _sign(_: nn.Module) -> tuple[float, ...]:
    return (0.0,)


def _sign_pieces_smooth(_: nn.Module) -> list[Piece]:
    return [Piece(0.0, 0.0, exact=False), Piece(1.0, 0.0, exact=False)]


def _hardtanh_thresholds(m: nn.Module) -> tuple[float, ...]:
    return (float(m.min_val), float(m.max_val))


def _hardtanh_pieces(m: nn.Module) -> list[Piece]:
    return [Piece(0.0, float(m.min_val)), Piece(1.0, 0.0), Piece(0.0, float(m.max_val))]


def _prelu_pieces(m: nn.Module) -> list[Piece]:
    return [Piece(m.weight.detach().clone(), 0.0), Piece(1.0, 0.0)]


_SMOOTH_SIGN = ActivationSpec(_sign, _sign_pieces_smooth)
_HARDSWISH = ActivationSpec(
    lambda m: (-3.0, 3.0), lambda m: [Piece(0.0, 0.0), Piece(0.5, 0.0, exact=False), Piece(1.0, 0.0)]
)
_HARDSIGMOID = ActivationSpec(
    lambda m: (-3.0, 3.0), lambda m: [Piece(0.0, 0.0), Piece(1.0 / 6.0, 0.5), Piece(0.0, 1.0)]
)

_REGISTRY: dict[type[nn.Module], ActivationSpec] = {
    nn.ReLU: ActivationSpec(_sign, lambda m: [Piece(0.0, 0.0), Piece(1.0, 0.0)], "relu"),
    nn.LeakyReLU: ActivationSpec(_sign, lambda m: [Piece(float(m.negative_slope), 0.0), Piece(1.0, 0.0)], "leaky_relu"),
    nn.PReLU: ActivationSpec(_sign, _prelu_pieces),
    nn.Hardtanh: ActivationSpec(_hardtanh_thresholds, _hardtanh_pieces, "hardtanh"),  # ReLU6 too
    nn.ELU: ActivationSpec(_sign, lambda m: [Piece(0.0, 0.0, exact=False), Piece(1.0, 0.0)]),
    nn.GELU: ActivationSpec(_sign, _sign_pieces_smooth, "gelu"),
    nn.SiLU: _SMOOTH_SIGN,
    nn.Mish: _SMOOTH_SIGN,
    nn.Hardswish: _HARDSWISH,
    nn.Hardsigmoid: _HARDSIGMOID,
}

# Activation classes of other libraries, by the module that defines them and their class name. Each joins
# _REGISTRY once its module has been imported (by the user: nepenthe imports none of them). timm's forwards are
# torch's functions: GELU is F.gelu(x), GELUTanh F.gelu(x, approximate="tanh"), QuickGELU x * sigmoid(1.702 x);
# Swish, Mish, HardSwish and HardSigmoid (and the "Me" ones, with their own backward) are what timm uses where torch
# lacks F.silu and the others.
_ELSEWHERE: dict[str, dict[str, ActivationSpec]] = {
    "timm.layers.activations": {
        "GELU": ActivationSpec(_sign, _sign_pieces_smooth, "gelu", {"approximate": "none"}),
        "GELUTanh": ActivationSpec(_sign, _sign_pieces_smooth, "gelu", {"approximate": "tanh"}),
        "QuickGELU": _SMOOTH_SIGN,
        "Swish": _SMOOTH_SIGN,
        "Mish": _SMOOTH_SIGN,
        "HardSwish": _HARDSWISH,
        "HardSigmoid": _HARDSIGMOID,
    },
    "timm.layers.activations_me": {
        "SwishMe": _SMOOTH_SIGN,
        "MishMe": _SMOOTH_SIGN,
        "HardSwishMe": _HARDSWISH,
        "HardSigmoidMe": _HARDSIGMOID,
    },
}
# Classes whose forward is exactly their spec's fused kernel, so fused profiling may run the kernel in their place.
_FUSABLE_ELSEWHERE: set[type[nn.Module]] = set()


def _register_imported() -> None:
    """Move the classes of every module of _ELSEWHERE that is imported by now into _REGISTRY."""
    for module_name in [name for name in _ELSEWHERE if name in sys.modules]:
        module = sys.modules[module_name]
        for class_name, spec in _ELSEWHERE.pop(module_name).items():
            cls = getattr(module, class_name, None)
            if isinstance(cls, type) and issubclass(cls, nn.Module):
                _REGISTRY.setdefault(cls, spec)
                if spec.fused_kind is not None:
                    _FUSABLE_ELSEWHERE.add(cls)


def register_activation(
    cls: type[nn.Module],
    thresholds: Sequence[float] | Callable[[nn.Module], tuple[float, ...]],
    pieces: Sequence[Piece] | Callable[[nn.Module], list[Piece]] | None = None,
) -> None:
    """Teach nepenthe a user's activation class.

    ``thresholds`` are the knees between its linear pieces (or a function of the module giving them);
    ``pieces`` the affine map of each piece, needed only to linearize it (default: unknown, which makes
    ``linearize`` refuse the layer).

    Example::

        nepenthe.register_activation(MyStep, thresholds=(0.0,),
                                     pieces=[Piece(0.0, 0.0), Piece(0.0, 1.0)])
    """
    th = thresholds if callable(thresholds) else (lambda m, t=tuple(float(v) for v in thresholds): t)
    if pieces is None:
        pc: Callable[[nn.Module], list[Piece]] = _unknown_pieces
    elif callable(pieces):
        pc = pieces
    else:
        fixed = list(pieces)
        pc = lambda m: fixed  # noqa: E731
    _REGISTRY[cls] = ActivationSpec(th, pc)


def _unknown_pieces(m: nn.Module) -> list[Piece]:
    raise ValueError(
        f"{type(m).__name__} was registered without pieces: nepenthe cannot tell which affine map it is on "
        "each state; pass pieces= to nepenthe.register_activation"
    )


def activation_spec(module: nn.Module) -> ActivationSpec | None:
    """The spec of ``module``'s class (or its nearest registered base class), or None if not an activation."""
    if _ELSEWHERE:
        _register_imported()
    for cls in type(module).__mro__:
        spec = _REGISTRY.get(cls)
        if spec is not None:
            return spec
    return None


def tracked_activation_types() -> tuple[type[nn.Module], ...]:
    """Every activation class nepenthe knows, built in or registered."""
    if _ELSEWHERE:
        _register_imported()
    return tuple(_REGISTRY)


def computes_fused_kind(module: nn.Module) -> bool:
    """True when ``module``'s forward is its spec's fused kernel: torch's own classes (ReLU6 too) and the known
    classes of other libraries, but not a user's subclass, whose forward may compute something else."""
    spec = activation_spec(module)
    if spec is None or spec.fused_kind is None:
        return False
    return type(module).__module__.startswith("torch.nn.modules.") or type(module) in _FUSABLE_ELSEWHERE


class ActivationTracer(fx.Tracer):
    """A torch.fx tracer that keeps every activation module nepenthe knows as a leaf: one ``call_module`` node per
    call site, even for a class whose forward is a bare function (timm's ``GELU`` is ``F.gelu``).

    A trace, finished or failed, leaves no proxy in the modules' own state: a cache that the forward fills (timm's
    TinyViT caches attention biases in eval mode) would otherwise hand proxies out after the trace, and the model
    could not be copied.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return activation_spec(m) is not None or super().is_leaf_module(m, module_qualified_name)

    def trace(self, root: nn.Module | Callable[..., object], concrete_args: dict | None = None) -> fx.Graph:
        try:
            return super().trace(root, concrete_args)
        finally:
            if isinstance(root, nn.Module):
                _scrub_proxies(root)


def _scrub_proxies(model: nn.Module) -> None:
    """Remove the proxies a trace left in the modules' own attributes and in the dicts they hold."""
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, fx.Proxy):
                setattr(module, name, None)
            elif isinstance(value, dict) and not name.startswith("_"):
                for key in [k for k, v in value.items() if isinstance(v, fx.Proxy) or isinstance(k, fx.Proxy)]:
                    del value[key]
