"""Conv/linear merge algebra: every merge is exact (checked against sequential float64 application) or refused."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nepenthe.surgery.algebra import (
    ConvOp,
    LinearOp,
    Refusal,
    compose_convs,
    identity_conv,
    scale_conv_input,
    scale_conv_output,
    sum_convs,
)

f64 = torch.float64


def reference(op: ConvOp, x: torch.Tensor) -> torch.Tensor:
    """Independent float64 oracle: plain F.conv2d, the border weight as a conv of a zero-padded ones channel."""
    y = F.conv2d(x, op.weight, op.bias, op.stride, op.padding, op.dilation, op.groups)
    if op.border is not None:
        ones = torch.ones(1, 1, *x.shape[-2:], dtype=f64)
        y = y + F.conv2d(ones, op.border, None, op.stride, op.padding, op.dilation)
    return y


@st.composite
def conv_ops(draw, cin: int, cout: int, border: bool = False):
    g = draw(st.sampled_from([d for d in (1, 2, cin) if cin % d == 0 and cout % d == 0]))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(cout, cin // g, *k, generator=gen, dtype=f64)
    bias = torch.randn(cout, generator=gen, dtype=f64) if draw(st.booleans()) else torch.zeros(cout, dtype=f64)
    b = torch.randn(cout, 1, *k, generator=gen, dtype=f64) if border and draw(st.booleans()) else None
    return ConvOp(
        weight,
        bias,
        (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        (draw(st.integers(0, 2)), draw(st.integers(0, 2))),
        (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        g,
        b,
    )


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= 1e-9 * (1 + b.abs().max()))


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    data=st.data(),
    cin=st.sampled_from([2, 4]),
    mid=st.sampled_from([2, 4]),
    cout=st.sampled_from([2, 4]),
    h=st.integers(3, 11),
    w=st.integers(3, 11),
)
def test_compose_is_exact_or_refused(data, cin, mid, cout, h, w):
    a = data.draw(conv_ops(cin, mid, border=True))
    b = data.draw(conv_ops(mid, cout, border=True))
    x = torch.randn(2, cin, h, w, dtype=f64)
    try:
        expected = reference(b, reference(a, x))
    except RuntimeError:  # the pair itself does not fit this input size
        return
    merged = compose_convs(a, b, (h, w))
    if isinstance(merged, Refusal):
        assert merged.reason
        return
    assert close(reference(merged, x), expected)


@SETTINGS
@given(
    data=st.data(),
    cin=st.sampled_from([2, 4]),
    cout=st.sampled_from([2, 4]),
    h=st.integers(3, 11),
    w=st.integers(3, 11),
    identity=st.booleans(),
)
def test_sum_is_exact_or_refused(data, cin, cout, h, w, identity):
    a = data.draw(conv_ops(cin, cout, border=True))
    b = identity_conv(cin) if identity and cin == cout else data.draw(conv_ops(cin, cout, border=True))
    x = torch.randn(2, cin, h, w, dtype=f64)
    try:
        expected = reference(a, x) + reference(b, x)
    except RuntimeError:
        return
    merged = sum_convs(a, b, (h, w))
    if isinstance(merged, Refusal):
        assert merged.reason
        return
    assert close(reference(merged, x), expected)


@SETTINGS
@given(data=st.data(), c=st.sampled_from([2, 4]), h=st.integers(3, 9))
def test_affine_folds_are_exact(data, c, h):
    op = data.draw(conv_ops(c, c, border=True))
    x = torch.randn(2, c, h, h, dtype=f64)
    try:
        reference(op, x)
    except RuntimeError:
        return
    s, t = torch.randn(c, dtype=f64), torch.randn(c, dtype=f64)
    view = (1, c, 1, 1)
    assert close(reference(scale_conv_output(op, s, t), x), reference(op, x) * s.view(view) + t.view(view))
    assert close(reference(scale_conv_input(op, s, t), x), reference(op, x * s.view(view) + t.view(view)))


def op(cout, cin, k, s=1, p=0, d=1, g=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ConvOp(
        torch.randn(cout, cin // g, k, k, generator=gen, dtype=f64),
        torch.randn(cout, generator=gen, dtype=f64),
        (s, s),
        (p, p),
        (d, d),
        g,
    )


@pytest.mark.parametrize(
    "a, b, kernel, groups",
    [
        (op(8, 4, 1), op(6, 8, 3, p=1), 3, 1),  # 1x1 then padded 3x3: bias through the padding via the border
        (op(8, 4, 3, p=1), op(6, 8, 1), 3, 1),  # any conv then 1x1
        (op(8, 8, 3, p=1, g=8), op(6, 8, 1), 3, 1),  # depthwise then pointwise
        (op(8, 8, 3, p=1, g=8), op(8, 8, 3, g=8, seed=1), 5, 8),  # depthwise pair stays depthwise
        (op(8, 4, 3), op(6, 8, 3), 5, 1),  # k1 then stride-1 k2 (no inner padding): kernel k1 + k2 - 1
        (op(8, 4, 3, s=2), op(6, 8, 1, s=2), 3, 1),  # strides multiply through a 1x1
    ],
)
def test_known_exact_merges(a, b, kernel, groups):
    merged = compose_convs(a, b, (12, 12))
    assert not isinstance(merged, Refusal), merged
    assert merged.kernel == (kernel, kernel) and merged.groups == groups
    x = torch.randn(1, a.in_channels, 12, 12, dtype=f64)
    assert close(reference(merged, x), reference(b, reference(a, x)))


def test_padded_three_by_three_pair_is_refused():
    # "same" 3x3 then "same" 3x3: conv2's zero padding sees zeros where conv1 reads real inputs at the border
    merged = compose_convs(op(8, 4, 3, p=1), op(6, 8, 3, p=1), (12, 12))
    assert isinstance(merged, Refusal) and "padding" in merged.reason


def test_residual_dirac_and_downsample_branch():
    branch = op(8, 8, 3, p=1)
    x = torch.randn(1, 8, 10, 10, dtype=f64)
    merged = sum_convs(branch, identity_conv(8), (10, 10))
    assert close(reference(merged, x), reference(branch, x) + x)
    main, down = op(8, 4, 3, s=2, p=1), op(8, 4, 1, s=2, seed=3)
    x = torch.randn(1, 4, 10, 10, dtype=f64)
    merged = sum_convs(main, down, (10, 10))
    assert merged.kernel == (3, 3)
    assert close(reference(merged, x), reference(main, x) + reference(down, x))


def test_linear_chain_matches_sequential():
    g = torch.Generator().manual_seed(0)
    ops = [
        LinearOp(torch.randn(o, i, generator=g, dtype=f64), torch.randn(o, generator=g, dtype=f64))
        for i, o in ((5, 7), (7, 3), (3, 4))
    ]
    x = torch.randn(6, 5, dtype=f64)
    y = x
    for o in ops:
        y = y @ o.weight.T + o.bias
    merged = LinearOp.chain(ops)
    assert close(x @ merged.weight.T + merged.bias, y)
