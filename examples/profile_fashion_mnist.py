"""Profile a small residual CNN trained briefly on Fashion-MNIST and print its per-layer entropy table.

Usage::

    python examples/profile_fashion_mnist.py [--data /usr/share/datasets/fashion-mnist] [--epochs 1]

The data are the idx files of Debian's ``dataset-fashion-mnist`` package, read with gzip and numpy (nothing is
downloaded). Runs in about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import gzip
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

import nepenthe

DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format): big-endian magic, dims, then unsigned bytes."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float (N, 1, 28, 28) standardized, labels as int64 (N,)."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.copy()).float().div_(255.0).sub_(0.286).div_(0.353).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


class Block(nn.Module):
    """A residual block that calls its one ReLU twice (like torchvision's BasicBlock): two layers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), bn=nn.BatchNorm2d(c_out), relu=nn.ReLU(inplace=True)
        )
    )


def small_resnet(width: int = 12) -> nn.Module:
    """Stem, residual block, pool, widen, residual block, pool, MLP head: 7 ReLU call sites."""
    return nn.Sequential(
        OrderedDict(
            stem=conv_bn_relu(1, width),
            block1=Block(width),
            pool1=nn.MaxPool2d(2),
            widen=conv_bn_relu(width, 2 * width),
            block2=Block(2 * width),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(2 * width * 7 * 7, 64),
            relu=nn.ReLU(),
            fc2=nn.Linear(64, 10),
        )
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int = 128) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}: train loss {total / len(x):.3f}")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float(torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]).eq(y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=12000, help="images used to train (speed)")
    parser.add_argument("--profile-images", type=int, default=6000, help="training images the profile sees")
    args = parser.parse_args()
    if not (args.data / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"Fashion-MNIST not found under {args.data} (apt-get install dataset-fashion-mnist)")
    torch.manual_seed(0)
    start = time.perf_counter()
    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "test")
    model = small_resnet()
    train(model, x_train[: args.train_images], y_train[: args.train_images], args.epochs)
    print(f"test accuracy {accuracy(model, x_test, y_test):.3f}")

    # The profile: eval mode, no grad, over training images, as NEPENTHE measures states.
    model.eval()
    with nepenthe.profile(model) as prof, torch.no_grad():
        for i in range(0, args.profile_images, 500):
            model(x_train[i : i + 500])
    print()
    prof.display()
    print()
    print("linearizable layers:", prof.linearizable() or "none")
    lowest = min(prof.layer_entropy().items(), key=lambda kv: kv[1])
    print(f"lowest-entropy layer: {lowest[0]} ({lowest[1]:.3f} bits per neuron)")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
