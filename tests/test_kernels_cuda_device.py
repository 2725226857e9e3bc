"""``on_device`` switches the current CUDA device only when the tensor's device is another one (runs without a GPU:
the current device is patched, and the switching context is only built, never entered)."""

from __future__ import annotations

import contextlib

import torch

from nepenthe.kernels.cuda_device import on_device


def test_switches_only_to_another_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert isinstance(on_device(torch.device("cuda", 1)), contextlib.nullcontext)
    assert isinstance(on_device(torch.device("cuda")), contextlib.nullcontext)  # no index: the current device
    switch = on_device(torch.device("cuda", 0))
    assert isinstance(switch, torch.cuda.device) and switch.idx == 0
