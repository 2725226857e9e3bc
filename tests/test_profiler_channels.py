"""The neuron dim is found without the user: dim 1 on conv feature maps, the last dim on Linear tokens."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model

import nepenthe
from nepenthe.profiler.channels import ProducerOutput, choose_channel_dim

torch.set_num_threads(2)

# name -> (constructor kwargs, input size, neuron dim of every >2-D activation input by architecture:
#          1 = conv feature maps (N, C, H, W); "last" = Linear outputs (B, L, C) / (B, H, W, C)).
# resnet18, vgg16_bn, mobilenet_v2 and swin_t are checked against reference counts in test_profiler_counts.py,
# densenet121 (after prepare) in test_profiler_api.py.
ARCHITECTURES = {
    "mobilenet_v3_small": ({}, 32, 1),
    "efficientnet_b0": ({}, 32, 1),
    "vit_b_16": ({"image_size": 32}, 32, "last"),
    "convnext_tiny": ({}, 32, "last"),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_channel_dim_of_every_layer_of_torchvision_models(name):
    kwargs, size, token_dim = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = get_model(name, weights=None, **kwargs).eval()
    shapes: dict[tuple[str, int], tuple[int, ...]] = {}
    calls: dict[str, int] = {}

    def record(module_name):
        def hook(module, args):
            index = calls.get(module_name, 0)
            calls[module_name] = index + 1
            shapes.setdefault((module_name, index), tuple(args[0].shape))

        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if nepenthe.activation_spec(m)]
    with nepenthe.profile(model, warn_functional=False) as prof, torch.no_grad():
        calls.clear()
        model(torch.randn(2, 3, size, size))
    for h in handles:
        h.remove()
    assert prof.layers
    for info in prof.layers.values():
        shape = shapes[(info.module_name, info.call_index)]
        if len(shape) <= 2:
            expected = 1
        else:
            expected = len(shape) - 1 if token_dim == "last" else 1
        assert info.channel_dim == expected, (info.name, shape)
        assert prof.counts()[info.name].shape[0] == shape[expected]


def test_squeeze_excitation_and_classifier_activations_of_mobilenet_v3():
    model = torchvision.models.mobilenet_v3_small().eval()
    with nepenthe.profile(model) as prof, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    layers = prof.layers
    # SE's Hardsigmoid acts on (N, C, 1, 1) from a 1x1 conv; the classifier's Hardswish on (N, 1024)
    assert prof.counts()["features.1.block.1.scale_activation"].shape == (16, 3)
    assert prof.counts()["classifier.1"].shape == (1024, 3)
    assert layers["classifier.1"].channel_dim == 1


@pytest.mark.parametrize(
    ("shape", "producer", "expected"),
    [
        ((4, 8, 8, 8), ProducerOutput((4, 8, 8, 8), 8, 1), 1),  # conv output with C == H == W
        ((4, 8, 8, 8), ProducerOutput((4, 8, 8, 8), 8, -1), 3),  # Linear on (B, H, W, C) tokens
        ((4, 16, 5), ProducerOutput((4, 5, 16), 16, -1), 1),  # Linear output permuted to (B, C, L)
        ((4, 5, 16), ProducerOutput((4, 16, 7, 7), 16, 1), 2),  # conv map flattened to tokens (ViT stem)
        ((4, 3, 7, 7), ProducerOutput((4, 3, 7, 7), 3, 1), 1),
        ((4, 10), ProducerOutput((4, 10), 10, -1), 1),
        ((4, 10), None, 1),
        ((10,), None, 0),
        ((4, 6, 9, 9), None, 1),
    ],
)
def test_choose_channel_dim(shape, producer, expected):
    assert choose_channel_dim(shape, producer) == expected


def test_layernorm2d_keeps_channels_first():
    from torchvision.models.convnext import LayerNorm2d

    model = nn.Sequential(nn.Conv2d(3, 6, 1), LayerNorm2d(6), nn.ReLU(), nn.Flatten(2), nn.LayerNorm(16), nn.GELU())
    with nepenthe.profile(model) as prof:
        model(torch.randn(2, 3, 4, 4))
    assert [i.channel_dim for i in prof.layers.values()] == [1, 2]
