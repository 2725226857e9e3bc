"""The activation registry: each piece's affine map is what the activation computes on that piece."""

import pytest
import torch
from torch import nn

from nepenthe.activations import Piece, activation_spec, register_activation, tracked_activation_types


@pytest.mark.parametrize(
    "module",
    [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-2.0, 1.5), nn.LeakyReLU(0.2), nn.PReLU(), nn.Hardsigmoid()],
    ids=lambda m: type(m).__name__,
)
def test_exact_pieces_reproduce_the_activation(module):
    spec = activation_spec(module)
    thresholds = spec.thresholds(module)
    x = torch.linspace(-8, 8, 2001, dtype=torch.float64)
    state = sum((x > t).long() for t in thresholds)
    expected = module.double()(x.clone())
    for k, piece in enumerate(spec.pieces(module)):
        assert piece.exact
        sel = state == k
        slope = piece.slope.double() if isinstance(piece.slope, torch.Tensor) else piece.slope
        torch.testing.assert_close(slope * x[sel] + piece.intercept, expected[sel], rtol=0, atol=1e-12)


@pytest.mark.parametrize("module", [nn.GELU(), nn.SiLU(), nn.Mish(), nn.ELU(), nn.Hardswish()])
def test_smooth_activations_are_flagged_approximate(module):
    pieces = activation_spec(module).pieces(module)
    assert not all(p.exact for p in pieces)


def test_relu6_is_understood_through_hardtanh():
    assert activation_spec(nn.ReLU6()).thresholds(nn.ReLU6()) == (0.0, 6.0)
    assert activation_spec(nn.ReLU6()).fused_kind == "hardtanh"
    assert activation_spec(nn.ReLU6()).fused_params(nn.ReLU6()) == {"min_val": 0.0, "max_val": 6.0}


def test_user_activation_can_be_registered():
    class Step(nn.Module):
        def forward(self, x):
            return (x > 0).to(x.dtype)

    assert activation_spec(Step()) is None
    register_activation(Step, thresholds=(0.0,), pieces=[Piece(0.0, 0.0), Piece(0.0, 1.0)])
    assert Step in tracked_activation_types()
    assert activation_spec(Step()).thresholds(Step()) == (0.0,)

    class Knee(nn.Module):
        pass

    register_activation(Knee, thresholds=(1.0,))
    with pytest.raises(ValueError, match="without pieces"):
        activation_spec(Knee()).pieces(Knee())
    assert activation_spec(nn.Linear(2, 2)) is None
