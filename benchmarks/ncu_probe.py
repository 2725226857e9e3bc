"""Launch each counting kernel once per tensor, for Nsight Compute (``ncu``) to profile on a GPU machine.

For each tensor (benchmarks' activation shapes at batch 128, each larger than an H100's L2): one warm-up launch per
backend (Triton compiles there), then one more per backend and ``x.sum()`` for comparison. Usage, on the device::

    ncu --kernel-name regex:"count_states|channels|rows_kernel|reduce_kernel" --section SpeedOfLight \\
        --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section Occupancy \\
        --section LaunchStats python3 benchmarks/ncu_probe.py [triton,cuda] > ncu.txt

``gpu-results/h100-20261126/ncu_summary.md`` holds one such run's main metrics.
"""

from __future__ import annotations

import sys

import torch

from nepenthe import count_states

# (name, shape, layout, dtype, thresholds, channel_dim)
CASES = [
    ("ResNet-18 layer1 channels_last fp32", (128, 64, 56, 56), "channels_last", torch.float32, (0.0,), 1),
    ("MobileNet-V2 block1 channels_last bf16", (128, 96, 112, 112), "channels_last", torch.bfloat16, (0.0, 6.0), 1),
    ("MobileNet-V2 block1 channels_last fp16", (128, 96, 112, 112), "channels_last", torch.float16, (0.0, 6.0), 1),
    ("Swin-T stage1 MLP fp16", (128, 56, 56, 384), "natural", torch.float16, (0.0,), -1),
    ("ResNet-18 layer1 NCHW fp32", (128, 64, 56, 56), "nchw", torch.float32, (0.0,), 1),
]


def main(argv: list[str]) -> None:
    backends = argv[0].split(",") if argv else ["triton", "cuda"]
    for name, shape, layout, dtype, thresholds, channel_dim in CASES:
        x = torch.randn(shape, device="cuda").mul_(2).to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        for backend in backends:
            count_states(x, thresholds, channel_dim=channel_dim, backend=backend)  # warm-up: compiles
        for backend in backends:
            count_states(x, thresholds, channel_dim=channel_dim, backend=backend)
        x.sum()
        torch.cuda.synchronize()
        print(name, "launched", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
