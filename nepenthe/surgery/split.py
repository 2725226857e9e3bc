"""Modules of other libraries that the surgery tracer calls as their parts, so that shrink can fold and merge them.

- timm's ``BatchNormAct2d`` (the norm of its MobileNets, EfficientNets, RegNets, DenseNets, ResNetV2s) subclasses
  ``nn.BatchNorm2d``; its forward is ``F.batch_norm``, then ``self.drop``, then ``self.act``. Traced as it is, the
  norm would be a bare function call that no fold understands. Its parts: a plain ``nn.BatchNorm2d``
  (``NAME.batch_norm``), then its two children.
- timm's ``Conv2dSame`` (its ``tf_*`` models' strided convs) pads its input as TensorFlow's "SAME" does, by amounts
  that depend on the input's size: fx cannot trace that. Its parts: :func:`pad_same` (one graph node, which
  computes the amounts when it runs), then a plain ``nn.Conv2d`` without padding (``NAME.conv``). BatchNorm and
  affine maps fold into that conv; merges across the pad are not made.
- timm's weight-standardized convs (``StdConv2d``, ``ScaledStdConv2d`` and their "SAME" forms; BiT, NFNets, hybrid
  ViTs) standardize their weight in every forward, then run ``F.conv2d``: traced as they are, the conv is a bare
  function call that nothing folds or merges. Their parts: a plain ``nn.Conv2d`` (``NAME.conv``) whose weight is
  the standardized weight, computed once when traced, after :func:`pad_same` where the module pads dynamically.

The new modules hold the split module's own parameters and buffers (the same tensors) and its training mode, but
for the standardized weight, which is a new tensor: the traced model computes the same function, and training it
would train a plain conv. The classes are known by module and class name (nepenthe never imports timm), and only
those exact classes: a subclass may compute something else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Part:
    """One step of a split module's forward, applied to the running value.

    ``call`` is a module or a function; ``name``, for a module made by the split, is its name under the split
    module's (a child of the model itself has none); ``args`` follow the value in a function's call.
    """

    call: nn.Module | Callable[..., torch.Tensor]
    name: str | None = None
    args: tuple = field(default=())


def pad_same(x: torch.Tensor, kernel_size: tuple, stride: tuple, dilation: tuple) -> torch.Tensor:
    """``x`` zero-padded as TensorFlow's "SAME" pads a conv's input: the output has ``ceil(size / stride)``
    positions; of an odd total, the extra row or column goes at the end."""
    pads: list[int] = []
    for size, k, s, d in reversed(list(zip(x.shape[-2:], kernel_size, stride, dilation, strict=True))):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


# The parts read the module's tensors through _parameters and _buffers: while fx traces, a parameter read as an
# attribute becomes a graph node.
def _batch_norm_act(module: nn.Module) -> list[Part]:
    norm = nn.BatchNorm2d(
        module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, device="meta"
    )
    _share(module, norm, ("weight", "bias"), ("running_mean", "running_var", "num_batches_tracked"))
    return [Part(norm, "batch_norm"), Part(module.drop), Part(module.act)]


def _conv2d_same(module: nn.Module) -> list[Part]:
    conv = _plain_conv(module, padding=0)
    _share(module, conv, ("weight", "bias"), ())
    return [_same_padding(module), Part(conv, "conv")]


def _standardized_conv2d(module: nn.Module) -> list[Part]:
    weight = module._parameters["weight"]
    gain = module._parameters.get("gain")  # ScaledStdConv2d: the standardized weight times gain * scale
    with torch.no_grad():
        standardized = F.batch_norm(
            weight.reshape(1, module.out_channels, -1), None, None,
            weight=None if gain is None else (gain * module.scale).view(-1), training=True, momentum=0.0,
            eps=module.eps,
        ).reshape_as(weight)  # fmt: skip
    dynamic = getattr(module, "same_pad", False)
    conv = _plain_conv(module, padding=0 if dynamic else module.padding)
    _share(module, conv, ("bias",), ())
    conv._parameters["weight"] = nn.Parameter(standardized, requires_grad=weight.requires_grad)
    return [_same_padding(module), Part(conv, "conv")] if dynamic else [Part(conv, "conv")]


def _plain_conv(module: nn.Module, padding: Any) -> nn.Conv2d:
    """An ``nn.Conv2d`` of ``module``'s shape with ``padding``, its tensors on the meta device (to be replaced)."""
    return nn.Conv2d(
        module.in_channels, module.out_channels, module.kernel_size, module.stride, padding, module.dilation,
        module.groups, module._parameters["bias"] is not None, device="meta",
    )  # fmt: skip


def _same_padding(module: nn.Module) -> Part:
    return Part(pad_same, args=(module.kernel_size, module.stride, module.dilation))


def _share(source: nn.Module, made: nn.Module, parameters: tuple[str, ...], buffers: tuple[str, ...]) -> None:
    for name in parameters:
        made._parameters[name] = source._parameters[name]
    for name in buffers:
        made._buffers[name] = source._buffers[name]
    made.train(source.training)


_STANDARDIZED = ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")

# (module, class name) -> the parts of a module of exactly that class, and the torch class it must subclass.
_SPLITS: dict[tuple[str, str], tuple[type[nn.Module], Callable[[nn.Module], list[Part]]]] = {
    ("timm.layers.norm_act", "BatchNormAct2d"): (nn.BatchNorm2d, _batch_norm_act),
    ("timm.layers.conv2d_same", "Conv2dSame"): (nn.Conv2d, _conv2d_same),
    **{("timm.layers.std_conv", name): (nn.Conv2d, _standardized_conv2d) for name in _STANDARDIZED},
}


def parts_of(module: nn.Module) -> list[Part] | None:
    """The parts whose calls in turn compute ``module``, or None where it is not a module that is split."""
    cls = type(module)
    known = _SPLITS.get((cls.__module__, cls.__qualname__))
    if known is None or not isinstance(module, known[0]):
        return None
    return known[1](module)
