"""What the fused activation tests compare against: torch's activations as torch computes them on a device, a GELU
in float64 without cancellation, bit-for-bit equality, and GELU's tolerance (the kernels compute it in float32,
float64 for float64)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GELU_TOL = {torch.float32: 2e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def torch_activation(x: torch.Tensor, kind: str, params: dict[str, object]) -> torch.Tensor:
    """torch's own activation ``kind`` of x, on x's device."""
    if kind == "relu":
        return F.relu(x)
    if kind == "hardtanh":
        return F.hardtanh(x, params["min_val"], params["max_val"])
    if kind == "leaky_relu":
        return F.leaky_relu(x, params["negative_slope"])
    return F.gelu(x, approximate=params["approximate"])


def as_cuda_computes(y: torch.Tensor, x: torch.Tensor, kind: str, lo: float = 0.0) -> torch.Tensor:
    """y, torch's relu or hardtanh of x computed on the CPU, as torch's CUDA kernels give it: there a value at the
    lower bound becomes the bound (+0.0 for -0.0), where the CPU kernels keep it."""
    if kind not in ("relu", "hardtanh"):
        return y
    return torch.where(x <= lo, torch.full_like(y, lo), y.detach())


def gelu_float64(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """GELU in float64 without cancellation in the negative tail: x * erfc(-x / sqrt 2) / 2, or x * sigmoid(2u)."""
    x = x.double()
    if approximate == "tanh":
        return x * torch.sigmoid(2 * 0.7978845608028654 * (x + 0.044715 * x**3))
    return x * 0.5 * torch.special.erfc(-x / math.sqrt(2))


def assert_bit_equal(got: torch.Tensor, want: torch.Tensor, msg: str = "") -> None:
    """Equal bit patterns (so -0.0 != 0.0), except that any NaN matches any NaN."""
    assert torch.equal(torch.isnan(got), torch.isnan(want)), msg
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[got.element_size()]
    keep = ~torch.isnan(want)
    assert torch.equal(got.contiguous().view(ints)[keep], want.contiguous().view(ints)[keep]), msg


def assert_gelu_close(got: torch.Tensor, want: torch.Tensor, msg: str | None = None) -> None:
    """Within GELU_TOL of want's dtype, absolute and relative; NaN where want has NaN."""
    tol = GELU_TOL[want.dtype]
    torch.testing.assert_close(got, want, atol=tol, rtol=tol, equal_nan=True, msg=msg)
