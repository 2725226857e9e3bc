"""Datasets a NEPENTHE run reads from disk; nothing is ever downloaded.

- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` package (idx files under
  ``/usr/share/datasets/fashion-mnist/``), or any folder holding the four ``*-ubyte.gz`` files;
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, for tests and quick checks);
- ``cifar10``: torchvision's on-disk CIFAR-10 (the ``cifar-10-batches-py`` folder under a root you give);
- ``imagefolder``: any ``ImageFolder`` tree with ``train/`` and ``test/`` (or ``val/``) sub-folders.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("fashion_mnist", "digits", "cifar10", "imagefolder")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DatasetMissing(FileNotFoundError):
    """A dataset is not on disk; the message names the path and how to get it."""


@dataclass
class DataBundle:
    """A train and a test split with what a model needs to know about them."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int


def read_idx_gz(path: str | Path) -> np.ndarray:
    """Read a gzip-compressed idx file (the MNIST format: magic, dims, big-endian sizes, unsigned bytes).

    Example: a file of 2x3 labels (magic ``00 00 08 02``, then the sizes 2 and 3, then the six bytes)::

        >>> import gzip, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx2-ubyte.gz")
        >>> with gzip.open(path, "wb") as f:
        ...     _ = f.write(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 7, 2, 9, 0, 1, 255]))
        >>> read_idx_gz(path)
        array([[  7,   2,   9],
               [  0,   1, 255]], dtype=uint8)
    """
    path = Path(path)
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - offset != expected:
        raise ValueError(f"{path} holds {len(data) - offset} values, its header says {shape} ({expected})")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def load_fashion_mnist(root: str | Path | None = None) -> DataBundle:
    """Fashion-MNIST as float tensors ``(N, 1, 28, 28)``, normalised with the training set's mean and std."""
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    splits = {}
    for split, (images_name, labels_name) in _FASHION_FILES.items():
        images_path, labels_path = folder / images_name, folder / labels_name
        for path in (images_path, labels_path):
            if not path.is_file():
                raise DatasetMissing(
                    f"Fashion-MNIST file {path} not found; install Debian's package with "
                    "`sudo apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist/) "
                    "or pass a folder holding the four *-ubyte.gz files"
                )
        images = torch.from_numpy(read_idx_gz(images_path).copy()).float().div_(255.0).unsqueeze(1)
        labels = torch.from_numpy(read_idx_gz(labels_path).astype(np.int64))
        splits[split] = (images, labels)
    mean, std = 0.2860, 0.3530  # of the 60000 training images
    train, test = ((x.sub_(mean).div_(std), y) for x, y in (splits["train"], splits["test"]))
    return DataBundle("fashion_mnist", TensorDataset(*train), TensorDataset(*test), 10, 1, 28)


def load_digits(test_fraction: float = 0.25) -> DataBundle:
    """scikit-learn's bundled 8x8 digits as ``(N, 1, 8, 8)`` tensors, split by a fixed stratified draw.

    The bundled CSV file is read directly: importing scikit-learn itself takes seconds and is not needed.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(d) / "datasets" / "data" / "digits.csv.gz" for d in locations), None)
    if path is None or not path.is_file():
        raise DatasetMissing(
            f"the digits dataset comes with scikit-learn ({path or 'not installed'}): `pip install scikit-learn`"
        )
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    x = torch.from_numpy(images / 16.0).unsqueeze(1)
    x = (x - 0.3) / 0.4
    y = torch.from_numpy(target)
    gen = torch.Generator().manual_seed(0)
    test_idx = []
    for label in range(10):
        idx = (y == label).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        test_idx.append(idx[: round(idx.numel() * test_fraction)])
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[torch.cat(test_idx)] = True
    train = TensorDataset(x[~is_test], y[~is_test])
    test = TensorDataset(x[is_test], y[is_test])
    return DataBundle("digits", train, test, 10, 1, 8)


def load_cifar10(root: str | Path, augment: bool = True) -> DataBundle:
    """CIFAR-10 in torchvision's on-disk format under ``root`` (the folder holding ``cifar-10-batches-py``)."""
    from torchvision import datasets, transforms

    folder = Path(root) / "cifar-10-batches-py"
    if not folder.is_dir():
        raise DatasetMissing(
            f"CIFAR-10 not found: {folder} does not exist. nepenthe never downloads; fetch it once with "
            f"`python -c \"import torchvision; torchvision.datasets.CIFAR10('{root}', download=True)\"`"
        )
    norm = transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    plain = [transforms.ToTensor(), norm]
    train_tf = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), *plain] if augment else plain
    train = datasets.CIFAR10(str(root), train=True, download=False, transform=transforms.Compose(train_tf))
    test = datasets.CIFAR10(str(root), train=False, download=False, transform=transforms.Compose(plain))
    return DataBundle("cifar10", train, test, 10, 3, 32)


def load_image_folder(root: str | Path, image_size: int = 32) -> DataBundle:
    """An ``ImageFolder`` tree: ``root/train/<class>/*.png`` and ``root/test/<class>/*`` (or ``root/val``)."""
    from torchvision import datasets, transforms

    root = Path(root)
    train_dir = root / "train"
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetMissing(f"ImageFolder root {root} must hold a train/ and a test/ (or val/) folder of classes")
    tf = transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    train = datasets.ImageFolder(str(train_dir), transform=tf)
    test = datasets.ImageFolder(str(test_dir), transform=tf)
    if train.classes != test.classes:
        raise ValueError(f"{train_dir} and {test_dir} hold different classes: {train.classes} vs {test.classes}")
    return DataBundle(f"imagefolder:{root}", train, test, len(train.classes), 3, image_size)


def load_dataset(name: str, root: str | Path | None = None, image_size: int = 32) -> DataBundle:
    """A dataset by name (``fashion_mnist``, ``digits``, ``cifar10``, ``imagefolder``).

    Example::

        >>> data = load_dataset("digits")
        >>> len(data.train), data.num_classes
        (1347, 10)
    """
    if name == "fashion_mnist":
        return load_fashion_mnist(root)
    if name == "digits":
        return load_digits()
    if name in ("cifar10", "imagefolder"):
        if root is None:
            raise ValueError(f"dataset {name!r} needs a root folder (--data-root)")
        return load_cifar10(root) if name == "cifar10" else load_image_folder(root, image_size)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


def subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """A fixed random subset of ``size`` samples drawn with ``seed`` (the dataset itself when size is None)."""
    n = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= n:
        return dataset
    gen = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(n, generator=gen)[:size].tolist())
