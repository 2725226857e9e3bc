"""Models by name, adapted to small images, never with downloaded weights.

- ``resnet18``: torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool) and an
  optional width multiplier (``width=0.25`` gives 16-32-64-128 channels); module names and blocks are
  torchvision's own, so every part of nepenthe recognises them;
- ``mobilenet_v2`` (first conv stride 1), ``vgg16_bn``, ``swin_t`` (patch 2 for small images);
- ``small_cnn``: a few conv-BN-ReLU layers and a linear head, for tests;
- ``timm:NAME``: any model of timm (``timm:mobilenetv2_100``, ``timm:convnext_atto``), if timm is installed, built
  by ``timm.create_model`` with the dataset's classes, channels and (for models that take one) image size, and
  timm's own stem; ``width`` does not apply.
Grey images (``in_channels=1``) replace the first conv.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock, ResNet

MODELS = ("resnet18", "mobilenet_v2", "vgg16_bn", "swin_t", "small_cnn", "timm:NAME")
TIMM_PREFIX = "timm:"


class CifarResNet18(ResNet):
    """torchvision's ResNet-18 (same blocks, same module names) with the CIFAR stem and scaled widths."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        nn.Module.__init__(self)
        planes = [max(1, round(64 * width * 2**i)) for i in range(4)]
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = planes[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(in_channels, planes[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, planes[0], 2)
        self.layer2 = self._make_layer(BasicBlock, planes[1], 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, planes[2], 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, planes[3], 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class SmallCNN(nn.Module):
    """``depth`` conv(3x3)-BN-ReLU layers of ``channels`` channels, global average pool, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, channels: int = 16, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [
                nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):  # noqa: D102 - nn.Module.forward
        return self.fc(self.pool(self.features(x)).flatten(1))


def build_model(
    name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, image_size: int = 32
) -> nn.Module:
    """A freshly initialised model by name (see the module docstring for the adaptations).

    Example::

        >>> model = build_model("resnet18", num_classes=10, in_channels=1, width=0.25)
    """
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if name.startswith(TIMM_PREFIX):
        return timm_model(name[len(TIMM_PREFIX) :], num_classes, in_channels, image_size)
    if name == "resnet18":
        return CifarResNet18(num_classes, in_channels, width)
    if name == "small_cnn":
        return SmallCNN(num_classes, in_channels, channels=max(1, round(16 * width)))
    if name == "mobilenet_v2":
        model = tvm.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width)
        first = model.features[0][0]
        model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=1, padding=1, bias=False)
        return model
    if name == "vgg16_bn":
        model = tvm.vgg16_bn(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        if image_size < 32:  # five 2x2 max-pools would shrink a 28x28 image to nothing
            model.features[-1] = nn.Identity()
        if image_size < 64:
            model.avgpool = nn.AdaptiveAvgPool2d(1)
            model.classifier[0] = nn.Linear(512, 4096)
        return model
    if name == "swin_t":
        patch = 2 if image_size < 64 else 4
        model = tvm.swin_t(weights=None, num_classes=num_classes)
        if in_channels != 3 or patch != 4:
            embed = model.features[0][0]
            model.features[0][0] = nn.Conv2d(in_channels, embed.out_channels, patch, stride=patch)
        return model
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def timm_model(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """timm's model ``name``, freshly initialised (never downloaded weights), for this dataset's images."""
    try:
        import timm
    except ImportError as err:
        raise ValueError(f"model timm:{name} needs timm, which is not installed (pip install timm)") from err
    if not timm.is_model(name):  # a base name or one with a pretrained tag (resnet18.a1_in1k)
        raise ValueError(f"timm has no model {name!r} (timm.list_models() lists them)")
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    try:  # vision transformers take the image size; convnets refuse the argument
        model = timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError:
        model = timm.create_model(name, **kwargs)
    model.eval()
    try:  # a model whose stem or patches do not fit the images fails here, not deep inside training
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    except Exception as err:  # torch raises RuntimeError, timm AssertionError
        raise ValueError(f"timm:{name} does not run on {in_channels}x{image_size}x{image_size} images: {err}") from err
    return model.train()
