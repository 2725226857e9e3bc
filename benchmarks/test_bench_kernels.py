"""pytest-benchmark version of the kernel benchmark (not part of the default test run, whose testpaths is tests/).

Run: ``python -m pytest benchmarks/test_bench_kernels.py --benchmark-only`` (add ``--benchmark-group-by=param:shape``
to read each backend next to its baselines). Shapes are the ResNet-18, MobileNet-V2 and Swin-T activations of
``bench_kernels.py`` at batch 8, on CPU, and on CUDA when a GPU is present.
"""

from __future__ import annotations

import pytest
import torch

import nepenthe
from nepenthe import count_states, fused_activation

SHAPES = [
    ((8, 64, 56, 56), 1, (0.0,)),  # ResNet-18 layer1
    ((8, 512, 7, 7), 1, (0.0,)),  # ResNet-18 layer4
    ((8, 96, 112, 112), 1, (0.0, 6.0)),  # MobileNet-V2 block1 (ReLU6)
    ((8, 56, 56, 384), -1, (0.0,)),  # Swin-T stage1 MLP (GELU), tokens last
]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LAYOUTS = ["contiguous", "channels_last"]


def _input(shape, layout, dtype, device):
    x = torch.randn(shape, device=device).to(dtype)
    if layout == "channels_last" and len(shape) == 4 and shape[-1] != 384:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _cases():
    for device in DEVICES:
        for shape, channel_dim, thresholds in SHAPES:
            for layout in LAYOUTS if channel_dim == 1 else LAYOUTS[:1]:
                for dtype in (torch.float32, torch.bfloat16):
                    name = f"{device}-{'x'.join(map(str, shape))}-{layout}-{str(dtype).removeprefix('torch.')}"
                    yield pytest.param(device, shape, channel_dim, thresholds, layout, dtype, id=name)


CASES = list(_cases())
ARGS = "device,shape,channel_dim,thresholds,layout,dtype"
BACKENDS = sorted({b for d in DEVICES for b in nepenthe.available_backends(d)} - {"torch"})


@pytest.mark.parametrize(ARGS, CASES)
@pytest.mark.parametrize("method", ["naive", "sum", *BACKENDS])
def test_count(benchmark, method, device, shape, channel_dim, thresholds, layout, dtype):
    if method not in ("naive", "sum") and method not in nepenthe.available_backends(device):
        pytest.skip(f"backend {method} does not run on {device}")
    x = _input(shape, layout, dtype, device)
    dims = tuple(d for d in range(x.dim()) if d != channel_dim % x.dim())
    if method == "naive":
        fn = lambda: (x > 0).sum(dim=dims)  # noqa: E731
    elif method == "sum":
        fn = x.sum
    else:
        fn = lambda: count_states(x, thresholds, channel_dim=channel_dim, backend=method)  # noqa: E731
    benchmark.extra_info["GB"] = x.numel() * x.element_size() / 1e9
    benchmark(lambda: (fn(), _sync(device)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,params", [("relu", {}), ("gelu", {"approximate": "none"})])
@pytest.mark.parametrize("method", ["fused", "torch_activation"])
def test_fused(benchmark, method, kind, params, device):
    x = _input((8, 64, 56, 56), "contiguous", torch.float32, device)
    counts = torch.zeros(64, 2, dtype=torch.int64, device=device)
    act = torch.nn.functional.relu if kind == "relu" else torch.nn.functional.gelu
    if method == "fused":
        fn = lambda: fused_activation(x, kind, counts, **params)  # noqa: E731
    else:
        fn = lambda: act(x)  # noqa: E731
    benchmark(lambda: (fn(), _sync(device)))
