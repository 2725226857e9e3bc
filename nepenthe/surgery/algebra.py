"""Exact algebra of linear layers: compose two convs, add two convs, fold affine maps, in float64.

Every function either returns the merged layer or a :class:`Refusal` with the reason; none approximates.
A conv is a :class:`ConvOp`: weight, uniform bias, and an optional *border weight*: a kernel applied to a
zero-padded channel of ones. The border weight is how a bias that passes through another conv's zero padding
stays exact (near the border the padding sees zeros, not the bias, so the bias contribution is not uniform).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

Pair = tuple[int, int]


@dataclass(frozen=True)
class Refusal:
    """Why a merge is not exact (or not allowed)."""

    reason: str


class BorderBiasConv2d(nn.Conv2d):
    """A Conv2d plus ``border_weight`` applied to a zero-padded channel of ones: an exact non-uniform bias.

    ``y = conv2d(x, weight, bias) + conv2d(ones(1, 1, H, W), border_weight)``; the second term costs one
    single-channel conv per forward, independent of the batch size.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        kh, kw = self.kernel_size
        self.border_weight = nn.Parameter(torch.zeros(self.out_channels, 1, kh, kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        ones = torch.ones((1, 1, x.shape[-2], x.shape[-1]), dtype=x.dtype, device=x.device)
        return y + F.conv2d(ones, self.border_weight.to(x.dtype), None, self.stride, self.padding, self.dilation)


@dataclass(frozen=True)
class ConvOp:
    """A zero-padded Conv2d in float64: ``conv(x, weight) + bias + conv(ones, border)``."""

    weight: torch.Tensor  # (Cout, Cin / groups, kh, kw)
    bias: torch.Tensor  # (Cout,)
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int
    border: torch.Tensor | None = None  # (Cout, 1, kh, kw)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel(self) -> Pair:
        return (self.weight.shape[2], self.weight.shape[3])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Run this conv (float64 reference)."""
        # CPU float64 grouped convs take a per-group slow path; the dense weight gives the same sums (the added
        # terms are exact zeros) tens of times faster
        dense = self.groups > 1 and x.dtype == torch.float64 and not x.is_cuda
        weight, groups = (self.dense_weight(), 1) if dense else (self.weight, self.groups)
        y = F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, groups)
        if self.border is not None:
            ones = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype)
            y = y + F.conv2d(ones, self.border, None, self.stride, self.padding, self.dilation)
        return y

    def dense_weight(self) -> torch.Tensor:
        """The weight as a groups=1 (Cout, Cin, kh, kw) tensor."""
        if self.groups == 1:
            return self.weight
        cout, cin_g, kh, kw = self.weight.shape
        g = self.groups
        dense = self.weight.new_zeros(cout, cin_g * g, kh, kw)
        og = cout // g
        for i in range(g):
            dense[i * og : (i + 1) * og, i * cin_g : (i + 1) * cin_g] = self.weight[i * og : (i + 1) * og]
        return dense


def out_length(n: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a zero-padded conv along one dim."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def conv_flops(op_shape: dict, in_hw: Pair) -> int:
    """Multiply-accumulates of a conv described by ``conv_shape`` on an ``in_hw`` input (per sample)."""
    ho = out_length(
        in_hw[0], op_shape["kernel"][0], op_shape["stride"][0], op_shape["padding"][0], op_shape["dilation"][0]
    )
    wo = out_length(
        in_hw[1], op_shape["kernel"][1], op_shape["stride"][1], op_shape["padding"][1], op_shape["dilation"][1]
    )
    kk = op_shape["kernel"][0] * op_shape["kernel"][1]
    macs = op_shape["out_channels"] * (op_shape["in_channels"] // op_shape["groups"]) * kk * ho * wo
    if op_shape.get("border"):
        macs += op_shape["out_channels"] * kk * ho * wo
    return macs


def conv_shape(op: ConvOp) -> dict:
    """The shape-only description of ``op`` (what merge planning and plans need)."""
    return {
        "in_channels": op.in_channels,
        "out_channels": op.out_channels,
        "kernel": op.kernel,
        "stride": op.stride,
        "padding": op.padding,
        "dilation": op.dilation,
        "groups": op.groups,
        "border": op.border is not None,
    }


def conv_op_from_module(m: nn.Module) -> ConvOp | Refusal:
    """The :class:`ConvOp` of a Conv2d (float64 copy), or why it cannot take part in merges."""
    if not isinstance(m, nn.Conv2d) or type(m) not in (nn.Conv2d, BorderBiasConv2d):
        return Refusal(f"{type(m).__name__} is not a plain Conv2d")
    if m.padding_mode != "zeros":
        return Refusal(f"padding_mode={m.padding_mode!r} (only zero padding merges exactly)")
    if isinstance(m.padding, str):
        if m.padding != "valid":
            return Refusal(f"padding={m.padding!r}")
        padding: Pair = (0, 0)
    else:
        padding = tuple(m.padding)
    w = m.weight.detach().to("cpu", torch.float64)
    b = m.bias.detach().to("cpu", torch.float64) if m.bias is not None else w.new_zeros(w.shape[0])
    border = m.border_weight.detach().to("cpu", torch.float64) if isinstance(m, BorderBiasConv2d) else None
    return ConvOp(w, b, tuple(m.stride), padding, tuple(m.dilation), m.groups, border)


def conv_module_from_shape(shape: dict, bias: bool = True) -> nn.Conv2d:
    """An uninitialised-value module of the given conv shape (used to rebuild plans)."""
    cls = BorderBiasConv2d if shape["border"] else nn.Conv2d
    return cls(
        shape["in_channels"],
        shape["out_channels"],
        tuple(shape["kernel"]),
        tuple(shape["stride"]),
        tuple(shape["padding"]),
        tuple(shape["dilation"]),
        shape["groups"],
        bias=bias,
    )


def conv_module_from_op(op: ConvOp, dtype: torch.dtype, device: torch.device) -> nn.Conv2d:
    """A Conv2d (or :class:`BorderBiasConv2d`) computing ``op``."""
    m = conv_module_from_shape(conv_shape(op)).to(device=device, dtype=dtype)
    with torch.no_grad():
        m.weight.copy_(op.weight)
        m.bias.copy_(op.bias)
        if op.border is not None:
            m.border_weight.copy_(op.border)
    return m


def _regroup(weight: torch.Tensor, candidates: list[int]) -> tuple[torch.Tensor, int]:
    """The dense ``weight`` with the largest candidate group count whose off-diagonal blocks are exactly zero."""
    cout, cin = weight.shape[:2]
    for g in sorted(set(candidates), reverse=True):
        if g <= 1 or cout % g or cin % g:
            continue
        blocks = weight.view(g, cout // g, g, cin // g, *weight.shape[2:])
        eye = torch.eye(g, dtype=torch.bool)
        if bool((blocks[~eye.view(g, g)[:, None, :].expand(g, cout // g, g)] == 0).all()):
            per = [blocks[i, :, i] for i in range(g)]
            return torch.cat(per, dim=0), g
    return weight, 1


def _compose_dim(n: int, k1: int, s1: int, p1: int, d1: int, k2: int, s2: int, p2: int, d2: int, needs_ones: bool):
    """One spatial dim of conv2 ∘ conv1: (K, S, P, D, tap step of conv2, tap step of conv1) or a reason."""
    n1 = out_length(n, k1, s1, p1, d1)
    n2 = out_length(n1, k2, s2, p2, d2)
    if n1 < 1 or n2 < 1:
        return f"empty output (input length {n})"
    big_d = math.gcd(d1, d2 * s1)
    big_k = (d2 * s1 * (k2 - 1) + d1 * (k1 - 1)) // big_d + 1
    big_s, big_p = s1 * s2, p2 * s1 + p1
    reads_left_phantom = p2 > 0
    reads_right_phantom = (n2 - 1) * s2 + d2 * (k2 - 1) - p2 >= n1
    if reads_left_phantom and -s1 + d1 * (k1 - 1) - p1 >= 0:
        return (
            f"the second conv's zero padding stands where the first conv would read real inputs "
            f"(kernel {k1}, padding {p1}): a single conv cannot reproduce the border"
        )
    if reads_right_phantom and n1 * s1 - p1 < n:
        return "the second conv's zero padding on the far border stands where the first conv would read real inputs"
    if needs_ones:
        # the ones channel passes conv1 through tap p1/d1, which must read inside the input exactly for valid outputs
        if p1 % d1 or p1 // d1 >= k1 or (n1 - 1) * s1 > n - 1:
            return "the first conv's bias cannot pass the second conv's zero padding exactly"
    if out_length(n, big_k, big_s, big_p, big_d) != n2:
        return "the merged conv would give a different output size"
    return big_k, big_s, big_p, big_d


def compose_conv_shapes(a: dict, b: dict, in_hw: Pair, a_has_bias: bool = True) -> dict | Refusal:
    """Shape of conv ``b`` ∘ conv ``a`` on an ``in_hw`` input, or why it is not exact."""
    if b["in_channels"] != a["out_channels"]:
        return Refusal(f"channel mismatch {a['out_channels']} -> {b['in_channels']}")
    needs_ones = bool(b["border"] or a["border"] or a_has_bias and (b["padding"][0] > 0 or b["padding"][1] > 0))
    dims = []
    for i in range(2):
        r = _compose_dim(
            in_hw[i],
            a["kernel"][i],
            a["stride"][i],
            a["padding"][i],
            a["dilation"][i],
            b["kernel"][i],
            b["stride"][i],
            b["padding"][i],
            b["dilation"][i],
            needs_ones,
        )
        if isinstance(r, str):
            return Refusal(r)
        dims.append(r)
    ga, gb = a["groups"], b["groups"]
    groups = math.gcd(ga, gb) if ga > 1 and gb > 1 else 1
    big_p = (dims[0][2], dims[1][2])
    border = needs_ones and big_p != (0, 0)
    return {
        "in_channels": a["in_channels"],
        "out_channels": b["out_channels"],
        "kernel": (dims[0][0], dims[1][0]),
        "stride": (dims[0][1], dims[1][1]),
        "padding": big_p,
        "dilation": (dims[0][3], dims[1][3]),
        "groups": groups,
        "border": bool(border),
    }


def compose_convs(a: ConvOp, b: ConvOp, in_hw: Pair) -> ConvOp | Refusal:
    """One conv equal to ``b(a(x))`` on ``in_hw`` inputs, or a :class:`Refusal` with the reason.

    Usage (a sketch)::

        merged = compose_convs(conv_op_from_module(pw), conv_op_from_module(dw), (32, 32))
    """
    a_has_bias = bool((a.bias != 0).any())
    shape = compose_conv_shapes(conv_shape(a), conv_shape(b), in_hw, a_has_bias)
    if isinstance(shape, Refusal):
        return shape
    needs_ones = b.border is not None or a.border is not None or (a_has_bias and (b.padding[0] > 0 or b.padding[1] > 0))
    big_k, stride, padding, big_d = shape["kernel"], shape["stride"], shape["padding"], shape["dilation"]
    step1 = (a.dilation[0] // big_d[0], a.dilation[1] // big_d[1])
    step2 = (b.dilation[0] * a.stride[0] // big_d[0], b.dilation[1] * a.stride[1] // big_d[1])

    def compose_kernels(w2: torch.Tensor, g2: int, w1: torch.Tensor) -> torch.Tensor:
        # w2 (Cout, M / g2, k2h, k2w) grouped, w1 (M, Cin, k1h, k1w) dense -> (Cout, Cin, K, K) on the merged grid
        cout, (m, cin, k1h, k1w) = w2.shape[0], w1.shape
        w1g = w1.reshape(g2, m // g2, cin, k1h, k1w)
        w2g = w2.reshape(g2, cout // g2, m // g2, *w2.shape[2:])
        out = w1.new_zeros(cout, cin, *big_k)
        for i in range(w2.shape[2]):
            for j in range(w2.shape[3]):
                part = torch.einsum("gom,gmihw->goihw", w2g[..., i, j], w1g).reshape(cout, cin, k1h, k1w)
                hs, ws = i * step2[0], j * step2[1]
                rows = slice(hs, hs + step1[0] * (k1h - 1) + 1, step1[0])
                cols = slice(ws, ws + step1[1] * (k1w - 1) + 1, step1[1])
                out[:, :, rows, cols] += part
        return out

    weight = compose_kernels(b.weight, b.groups, a.dense_weight())
    bias1, border = a.bias, None
    if needs_ones:
        # biases ride on a zero-padded channel of ones, which conv1 passes through the tap that reads position i
        k1h, k1w = a.kernel
        th, tw = a.padding[0] // a.dilation[0], a.padding[1] // a.dilation[1]
        ones_w = a.border.clone() if a.border is not None else a.weight.new_zeros(a.out_channels, 1, k1h, k1w)
        ones_w[:, 0, th, tw] += a.bias
        bias1 = torch.zeros_like(a.bias)
        ones_pass = a.weight.new_zeros(1, 1, k1h, k1w)
        ones_pass[0, 0, th, tw] = 1.0
        border = compose_kernels(b.weight, b.groups, ones_w)
        if b.border is not None:
            border = border + compose_kernels(b.border, 1, ones_pass)
    cout = b.out_channels
    bias = b.bias + torch.einsum(
        "gom,gm->go", b.weight.sum(dim=(2, 3)).view(b.groups, cout // b.groups, -1), bias1.view(b.groups, -1)
    ).reshape(-1)
    if border is not None and padding == (0, 0):
        bias = bias + border.sum(dim=(1, 2, 3))
        border = None
    weight, groups = _regroup(weight.contiguous(), [a.groups, b.groups, math.gcd(a.groups, b.groups)])
    return ConvOp(weight, bias, stride, padding, big_d, groups, border)


def sum_conv_shapes(a: dict, b: dict, in_hw: Pair) -> dict | Refusal:
    """Shape of one conv equal to ``a(x) + b(x)``, or why not."""
    if a["in_channels"] != b["in_channels"] or a["out_channels"] != b["out_channels"]:
        return Refusal("the two branches have different channel counts")
    if tuple(a["stride"]) != tuple(b["stride"]):
        return Refusal(f"the two branches have different strides {a['stride']} and {b['stride']}")
    dims = []
    for i in range(2):
        ka, pa, da = a["kernel"][i], a["padding"][i], a["dilation"][i]
        kb, pb, db = b["kernel"][i], b["padding"][i], b["dilation"][i]
        big_d = math.gcd(da, db)
        lo = min(-pa, -pb)
        hi = max(-pa + da * (ka - 1), -pb + db * (kb - 1))
        if (-pa - lo) % big_d or (-pb - lo) % big_d:
            return Refusal("the two branches' taps do not share a grid")
        big_k, big_p, s = (hi - lo) // big_d + 1, -lo, a["stride"][i]
        n = in_hw[i]
        target = out_length(n, ka, s, pa, da)
        if out_length(n, kb, s, pb, db) != target or out_length(n, big_k, s, big_p, big_d) != target:
            return Refusal("the branches (or their sum) have different output sizes")
        dims.append((big_k, big_p, big_d))
    ga, gb = a["groups"], b["groups"]
    groups = math.gcd(ga, gb) if ga > 1 and gb > 1 else 1
    padding = (dims[0][1], dims[1][1])
    return {
        "in_channels": a["in_channels"],
        "out_channels": a["out_channels"],
        "kernel": (dims[0][0], dims[1][0]),
        "stride": tuple(a["stride"]),
        "padding": padding,
        "dilation": (dims[0][2], dims[1][2]),
        "groups": groups,
        "border": (a["border"] or b["border"]) and padding != (0, 0),
    }


def sum_convs(a: ConvOp, b: ConvOp, in_hw: Pair) -> ConvOp | Refusal:
    """One conv equal to ``a(x) + b(x)`` (a residual skip, a downsample branch), or the reason it is not exact."""
    shape = sum_conv_shapes(conv_shape(a), conv_shape(b), in_hw)
    if isinstance(shape, Refusal):
        return shape
    big_k, big_p, big_d = shape["kernel"], shape["padding"], shape["dilation"]
    weight = a.weight.new_zeros(a.out_channels, a.in_channels, *big_k)
    border = a.weight.new_zeros(a.out_channels, 1, *big_k)
    for op in (a, b):
        oh = (big_p[0] - op.padding[0]) // big_d[0]
        ow = (big_p[1] - op.padding[1]) // big_d[1]
        sh, sw = op.dilation[0] // big_d[0], op.dilation[1] // big_d[1]
        kh, kw = op.kernel
        region = (slice(oh, oh + sh * (kh - 1) + 1, sh), slice(ow, ow + sw * (kw - 1) + 1, sw))
        weight[:, :, region[0], region[1]] += op.dense_weight()
        if op.border is not None:
            border[:, :, region[0], region[1]] += op.border
    bias = a.bias + b.bias
    has_border = a.border is not None or b.border is not None
    if has_border and big_p == (0, 0):
        bias = bias + border.sum(dim=(1, 2, 3))
    border_out = border if has_border and big_p != (0, 0) else None
    weight, groups = _regroup(weight, [a.groups, b.groups, math.gcd(a.groups, b.groups)])
    return ConvOp(weight, bias, shape["stride"], big_p, big_d, groups, border_out)


def identity_conv(channels: int, dtype: torch.dtype = torch.float64) -> ConvOp:
    """The identity map as a depthwise 1x1 conv (the Dirac kernel of a residual skip)."""
    return ConvOp(
        torch.ones(channels, 1, 1, 1, dtype=dtype), torch.zeros(channels, dtype=dtype), (1, 1), (0, 0), (1, 1), channels
    )


def scale_conv_output(op: ConvOp, scale: torch.Tensor, shift: torch.Tensor) -> ConvOp:
    """``scale[c] * op(x) + shift[c]`` as one conv (BatchNorm folding, a linearized activation after a conv)."""
    s = scale.to(torch.float64).expand(op.out_channels)
    t = shift.to(torch.float64).expand(op.out_channels)
    border = op.border * s.view(-1, 1, 1, 1) if op.border is not None else None
    return replace(op, weight=op.weight * s.view(-1, 1, 1, 1), bias=op.bias * s + t, border=border)


def scale_conv_input(op: ConvOp, scale: torch.Tensor, shift: torch.Tensor) -> ConvOp:
    """``op(scale[c] * x + shift[c])`` as one conv; the shift goes through the border weight when padded."""
    s = scale.to(torch.float64).expand(op.in_channels)
    t = shift.to(torch.float64).expand(op.in_channels)
    cin_g = op.weight.shape[1]
    g = op.groups
    og = op.out_channels // g
    w = op.weight.view(g, og, cin_g, *op.kernel) * s.view(g, 1, cin_g, 1, 1)
    shift_w = (op.weight.view(g, og, cin_g, *op.kernel) * t.view(g, 1, cin_g, 1, 1)).sum(dim=2)
    shift_w = shift_w.reshape(op.out_channels, 1, *op.kernel)
    bias, border = op.bias, op.border
    if op.padding == (0, 0):
        bias = bias + shift_w.sum(dim=(1, 2, 3))
    elif bool((t != 0).any()):
        border = shift_w if border is None else border + shift_w
    return replace(op, weight=w.reshape(op.weight.shape), bias=bias, border=border)


@dataclass(frozen=True)
class LinearOp:
    """``x @ weight.T + bias`` in float64 (a Linear over the last dim)."""

    weight: torch.Tensor
    bias: torch.Tensor

    @staticmethod
    def from_module(m: nn.Linear) -> LinearOp:
        w = m.weight.detach().to("cpu", torch.float64)
        b = m.bias.detach().to("cpu", torch.float64) if m.bias is not None else w.new_zeros(w.shape[0])
        return LinearOp(w, b)

    def to_module(self, dtype: torch.dtype, device: torch.device) -> nn.Linear:
        m = nn.Linear(self.weight.shape[1], self.weight.shape[0]).to(device=device, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(self.weight)
            m.bias.copy_(self.bias)
        return m

    def compose(self, then: LinearOp) -> LinearOp:
        """``then(self(x))`` as one Linear: ``W2 W1``, ``W2 b1 + b2``."""
        return LinearOp(then.weight @ self.weight, then.weight @ self.bias + then.bias)

    @staticmethod
    def chain(ops: list[LinearOp]) -> LinearOp:
        """``ops[-1](...ops[0](x))`` as one Linear; weights multiply from the output side (cheapest first)."""
        weight = ops[-1].weight
        for op in reversed(ops[:-1]):
            weight = weight @ op.weight
        bias = ops[0].bias
        for op in ops[1:]:
            bias = op.weight @ bias + op.bias
        return LinearOp(weight, bias)

    def scale_output(self, scale: torch.Tensor, shift: torch.Tensor) -> LinearOp:
        s = scale.to(torch.float64).expand(self.weight.shape[0])
        t = shift.to(torch.float64).expand(self.weight.shape[0])
        return LinearOp(self.weight * s[:, None], self.bias * s + t)

    def scale_input(self, scale: torch.Tensor, shift: torch.Tensor) -> LinearOp:
        s = scale.to(torch.float64).expand(self.weight.shape[1])
        t = shift.to(torch.float64).expand(self.weight.shape[1])
        return LinearOp(self.weight * s[None, :], self.bias + self.weight @ t)

    def add(self, other: LinearOp) -> LinearOp:
        return LinearOp(self.weight + other.weight, self.bias + other.bias)
