"""What each activation's states are, and what affine map each state is.

A state is one linear piece of an activation (METHOD.md section 1). The profiler reads the thresholds that
separate the pieces; the surgeon reads the affine map of the one piece a neuron stays in. Both ask this module,
so a user's own activation registered here is understood by every part of nepenthe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

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
    ``fused_kind`` names the fused counting kernel that computes this activation, or None.
    """

    thresholds: Callable[[nn.Module], tuple[float, ...]]
    pieces: Callable[[nn.Module], list[Piece]]
    fused_kind: str | None = None

    def fused_params(self, module: nn.Module) -> dict[str, object]:
        """Keyword parameters of the fused kernel for ``module`` (slopes, knees, GELU approximation)."""
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


_REGISTRY: dict[type[nn.Module], ActivationSpec] = {
    nn.ReLU: ActivationSpec(_sign, lambda m: [Piece(0.0, 0.0), Piece(1.0, 0.0)], "relu"),
    nn.LeakyReLU: ActivationSpec(_sign, lambda m: [Piece(float(m.negative_slope), 0.0), Piece(1.0, 0.0)], "leaky_relu"),
    nn.PReLU: ActivationSpec(_sign, _prelu_pieces),
    nn.Hardtanh: ActivationSpec(_hardtanh_thresholds, _hardtanh_pieces, "hardtanh"),  # ReLU6 too
    nn.ELU: ActivationSpec(_sign, lambda m: [Piece(0.0, 0.0, exact=False), Piece(1.0, 0.0)]),
    nn.GELU: ActivationSpec(_sign, _sign_pieces_smooth, "gelu"),
    nn.SiLU: ActivationSpec(_sign, _sign_pieces_smooth),
    nn.Mish: ActivationSpec(_sign, _sign_pieces_smooth),
    nn.Hardswish: ActivationSpec(
        lambda m: (-3.0, 3.0),
        lambda m: [Piece(0.0, 0.0), Piece(0.5, 0.0, exact=False), Piece(1.0, 0.0)],
    ),
    nn.Hardsigmoid: ActivationSpec(
        lambda m: (-3.0, 3.0), lambda m: [Piece(0.0, 0.0), Piece(1.0 / 6.0, 0.5), Piece(0.0, 1.0)]
    ),
}


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
    for cls in type(module).__mro__:
        spec = _REGISTRY.get(cls)
        if spec is not None:
            return spec
    return None


def tracked_activation_types() -> tuple[type[nn.Module], ...]:
    """Every activation class nepenthe knows, built in or registered."""
    return tuple(_REGISTRY)
