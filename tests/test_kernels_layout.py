"""Channel views and kernel thresholds: the two facts every backend relies on."""

import math

import numpy as np
import pytest
import torch

from nepenthe.kernels.layout import channel_view, readable_view
from nepenthe.kernels.thresholds import half_thresholds, kernel_thresholds


def _gather(x: torch.Tensor, view) -> torch.Tensor:
    """Read x's storage through the view's strides: (outer, C, inner) values."""
    o = torch.arange(view.outer).view(-1, 1, 1) * view.stride_outer
    c = torch.arange(view.channels).view(1, -1, 1) * view.stride_channel
    i = torch.arange(view.inner).view(1, 1, -1) * view.stride_inner
    flat = torch.as_strided(x, (x.untyped_storage().nbytes() // x.element_size(),), (1,), 0)
    return flat[x.storage_offset() + o + c + i]


@pytest.mark.parametrize(
    "make, dim",
    [
        (lambda t: t, 1),
        (lambda t: t.contiguous(memory_format=torch.channels_last), 1),
        (lambda t: t.permute(0, 2, 3, 1), -1),
        (lambda t: t.permute(0, 2, 3, 1).contiguous(), -1),
        (lambda t: t[1:, :, 2:], 1),
        (lambda t: t[:, 1:3], 1),
        (lambda t: t.transpose(0, 1), 0),
        (lambda t: t[:, :, ::2, 1:], 1),
        (lambda t: t.flatten(2).transpose(1, 2), -1),
    ],
)
def test_view_reads_the_same_values_per_channel(make, dim):
    x = make(torch.randn(3, 4, 5, 6))
    xr, view = readable_view(x, dim)
    got = _gather(xr, view).movedim(1, 0).reshape(view.channels, -1).sort(dim=1).values
    want = x.movedim(dim, 0).reshape(x.shape[dim], -1).sort(dim=1).values
    assert torch.equal(got, want)


def test_common_layouts_need_no_copy():
    x = torch.randn(2, 8, 4, 4)
    v = channel_view(x, 1)
    assert (v.outer, v.channels, v.inner, v.stride_inner) == (2, 8, 16, 1)
    v = channel_view(x.contiguous(memory_format=torch.channels_last), 1)
    assert (v.outer, v.channels, v.inner, v.stride_channel, v.stride_inner) == (1, 8, 32, 1, 8)
    assert channel_view(x[:, :, 1:], 1) is not None
    assert channel_view(x[:, :, ::2, 1:], 1) is None  # three separate strides: the one case that copies


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t", [0.1, -3.0, 1 / 3, 6.0, -1e-40, 1e39, -1e39])
def test_rounded_thresholds_give_exact_comparisons(dtype, t):
    th = kernel_thresholds((t,), dtype)
    with np.errstate(over="ignore"):
        t32 = np.float32(t)
    near = [np.nextafter(t32, np.float32(-np.inf)), t32, np.nextafter(t32, np.float32(np.inf))]
    values = torch.tensor([*map(float, near), -math.inf, math.inf, 0.0, -0.0], dtype=torch.float32)
    assert torch.equal(values > th.greater[0], values.double() > t)
    ties = values == th.tie[0]
    assert torch.equal(ties, values.double() == t)


HALF_THRESHOLDS = [0.1, -0.3, 6.0, 0.0, -0.0, 1e-9, -1e-9, 2.0**-24, 2.0**-133, 70000.0, -70000.0, 65504.0,
                   65519.0, 65520.0, 3.0e38, -3.4e38, 1e39, math.inf, -math.inf, 1 / 3, -2.5, 1e5]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_thresholds_compare_every_16bit_value_exactly(dtype):
    """The thresholds that the Triton kernel compares 16-bit values against in their own format: for every
    16-bit pattern that is not NaN, ``v > g`` and ``v == tie`` in ``dtype`` agree with ``v > t`` and ``v == t``
    in float64 (the specification's real-number comparisons)."""
    values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    values = values[~values.isnan()]
    exact = values.double()
    greater, tie = half_thresholds(kernel_thresholds(tuple(HALF_THRESHOLDS), dtype), dtype)
    for t, g, e in zip(HALF_THRESHOLDS, greater, tie, strict=True):
        g16, e16 = torch.tensor(g).to(dtype), torch.tensor(e).to(dtype)
        assert float(g16) == g and (math.isnan(e) or float(e16) == e), t  # held exactly by the format
        assert torch.equal(values > g16, exact > t), t
        assert torch.equal(values <= g16, exact <= t), t
        assert torch.equal(values == e16, exact == t), t


def test_float64_thresholds_are_unchanged():
    th = kernel_thresholds((0.1, 0.2), torch.float64)
    assert th.greater == (0.1, 0.2) and th.tie == (0.1, 0.2) and th.compute_dtype == torch.float64
