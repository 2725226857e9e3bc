"""Datasets from disk (idx parsing, clear errors when missing) and models by name."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torchvision.models.resnet import BasicBlock

from nepenthe.orchestrator.data import (
    FASHION_MNIST_DIR,
    DatasetMissing,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    read_idx_gz,
    subset,
)
from nepenthe.orchestrator.models import build_model


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx_gz(tmp_path / "x.gz"), array)


def test_read_idx_refuses_bad_files(tmp_path) -> None:
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx_gz(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"abc")
    with pytest.raises(ValueError, match="header says"):
        read_idx_gz(tmp_path / "short.gz")


def test_fashion_mnist_from_a_folder_and_missing_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    data = load_fashion_mnist(tmp_path)
    assert (len(data.train), len(data.test), data.in_channels, data.image_size) == (6, 4, 1, 28)
    x, y = data.train[0]
    assert x.shape == (1, 28, 28) and y.dtype == torch.int64
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetMissing, match=r"t10k-labels-idx1-ubyte\.gz.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="dataset not installed")
def test_installed_fashion_mnist() -> None:
    data = load_fashion_mnist()
    assert (len(data.train), len(data.test)) == (60000, 10000)
    assert abs(float(data.train.tensors[0].mean())) < 0.01  # normalised with the training mean and std
    assert torch.equal(torch.bincount(data.test.tensors[1]), torch.full((10,), 1000))


def test_digits_split_and_subset() -> None:
    data = load_dataset("digits")
    assert len(data.train) + len(data.test) == 1797
    labels = data.test.tensors[1]
    assert torch.bincount(labels, minlength=10).min() >= 40  # stratified: every class in the test split
    small = subset(data.train, 100, seed=3)
    assert len(small) == 100 and subset(data.train, 100, seed=3).indices == small.indices
    assert subset(data.train, None, seed=3) is data.train


@pytest.mark.slow  # importing scikit-learn takes seconds
def test_digits_equal_scikit_learns() -> None:
    from sklearn.datasets import load_digits as sk_digits

    data, reference = load_dataset("digits"), sk_digits()
    images = torch.cat([data.train.tensors[0], data.test.tensors[0]]).flatten(1) * 0.4 + 0.3
    labels = torch.cat([data.train.tensors[1], data.test.tensors[1]])
    ours = sorted(tuple(round(float(v) * 16) for v in row) + (int(y),) for row, y in zip(images, labels, strict=True))
    theirs = sorted(
        tuple(int(v) for v in row) + (int(y),) for row, y in zip(reference.data, reference.target, strict=True)
    )
    assert ours == theirs


def test_missing_datasets_name_the_path(tmp_path) -> None:
    with pytest.raises(DatasetMissing, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)
    with pytest.raises(DatasetMissing, match="train/ and a test/"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="needs a root folder"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("mnist")


def test_image_folder(tmp_path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / split / cls / "a.png")
    data = load_image_folder(tmp_path, image_size=16)
    assert data.num_classes == 2 and data.train[0][0].shape == (3, 16, 16)


def test_cifar_resnet18_stem_width_and_grey_input() -> None:
    model = build_model("resnet18", num_classes=7, in_channels=1, width=0.25).eval()
    assert isinstance(model.layer1[0], BasicBlock)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert model.conv1.out_channels == 16 and model.fc.in_features == 128
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", width=0)


def test_small_cnn_forward() -> None:
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=8).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "vgg16_bn", "swin_t"])
def test_large_models_forward_small_images(name: str) -> None:
    model = build_model(name, num_classes=10, in_channels=1, image_size=28).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
