"""Which dimension of an activation's input holds its neurons (channels), found without the user saying it.

Convolutions and BatchNorm put features in dim 1 (``(N, C, H, W)``); Linear layers put them last
(``(B, L, C)`` in ViT, ``(B, H, W, C)`` in Swin-T's MLP). An activation inherits the layout of the most recent
*producer* module (conv, linear, normalization) that ran before it: :class:`ProducerTracker` records that
producer's output, and :func:`choose_channel_dim` matches its feature count against the activation's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

_CHANNEL_FIRST = (_ConvNd, _BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LocalResponseNorm)
_CHANNEL_LAST = (nn.Linear, nn.Bilinear, nn.Embedding, nn.MultiheadAttention) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)


@dataclass(frozen=True)
class ProducerOutput:
    """The last producer's output: its shape, its feature count and the dim (1 or -1) that holds them."""

    shape: tuple[int, ...]
    features: int
    dim: int


def is_producer(module: nn.Module) -> bool:
    """True for the modules whose output layout an activation after them inherits."""
    return isinstance(module, _CHANNEL_FIRST + _CHANNEL_LAST + (nn.LayerNorm,))


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _producer_dim(module: nn.Module, out: torch.Tensor) -> tuple[int, int] | None:
    """(feature count, dim) of ``module``'s output ``out``, or None when it has no feature dim."""
    if out.dim() < 2:
        return None
    if isinstance(module, _CHANNEL_FIRST):
        return out.shape[1], 1
    if isinstance(module, nn.LayerNorm):
        features = module.normalized_shape[-1] if module.normalized_shape else out.shape[-1]
        # torchvision's LayerNorm2d (ConvNeXt) normalizes dim 1 of an NCHW tensor by permuting around
        # nn.LayerNorm.forward; a plain LayerNorm normalizes the last dim.
        if type(module).forward is not nn.LayerNorm.forward and out.shape[1] == features:
            return features, 1
        return features, -1
    return out.shape[-1], -1


class ProducerTracker:
    """Forward hooks on every producer module of a model that remember the most recent producer's output."""

    def __init__(self, model: nn.Module) -> None:
        self.last: ProducerOutput | None = None
        self._handles = [m.register_forward_hook(self._hook) for m in model.modules() if is_producer(m)]

    def _hook(self, module: nn.Module, args: tuple, output: object) -> None:
        out = _first_tensor(output)
        found = None if out is None else _producer_dim(module, out)
        if found is not None:
            self.last = ProducerOutput(tuple(out.shape), found[0], found[1])

    def remove(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []


def choose_channel_dim(shape: tuple[int, ...], producer: ProducerOutput | None) -> int:
    """The neuron dim (non-negative) of an activation input of ``shape``, given the last producer's output.

    Rules, in order: 0-D/1-D/2-D inputs use dim ``ndim - 1`` (``(N, C)``: features last, which is dim 1);
    an input shaped like the producer's output uses the producer's dim; otherwise the dim (1 or last) whose
    size equals the producer's feature count, the producer's own dim breaking a tie; dim 1 when nothing matches.

    Example::

        >>> choose_channel_dim((8, 7, 7, 384), ProducerOutput((8, 7, 7, 384), 384, -1))
        3
    """
    ndim = len(shape)
    if ndim <= 2:
        return max(ndim - 1, 0)
    last = ndim - 1
    if producer is None:
        return 1
    own = 1 if producer.dim == 1 else last
    if tuple(shape) == producer.shape:
        return own
    first_matches, last_matches = shape[1] == producer.features, shape[-1] == producer.features
    if first_matches and last_matches:
        return own
    if last_matches:
        return last
    return 1
