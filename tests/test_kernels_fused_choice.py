"""fused_activation on the cpu backend: its fused kernel, or a count and torch's activation where the backend's
``fused_one_pass(plan)`` measured those faster (GELU in bfloat16 and float64, and float32 in AVX2 builds). Either
way the output is torch's activation and the counts are the reference's; the kernels themselves are tested in
test_kernels_fused.py and test_kernels_random.py, which run them on every call."""

from __future__ import annotations

import math

import pytest
import torch
from activation_oracles import assert_bit_equal, assert_gelu_close, torch_activation

from nepenthe.kernels import available_backends, cpu_backend, fused_activation, torch_backend
from nepenthe.kernels.reference import count_states_reference

needs_cpu = pytest.mark.skipif("cpu" not in available_backends(), reason="the cpu extension is not built")
GELU = {"approximate": "none"}


def _input(dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(2, 8, 7, 7, generator=gen, dtype=torch.float64) * 3
    x.view(-1)[5] = math.nan
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@needs_cpu
@pytest.mark.parametrize("avx2_only", [False, True], ids=["avx512", "avx2"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize(
    "kind,params,dtype,kernel,kernel_avx2",
    [("relu", {}, torch.float32, True, True), ("relu", {}, torch.bfloat16, True, True),
     ("relu", {}, torch.float64, True, True), ("gelu", GELU, torch.float16, True, True),
     ("gelu", GELU, torch.float32, True, False), ("gelu", GELU, torch.bfloat16, False, False),
     ("gelu", GELU, torch.float64, False, False), ("gelu", {"approximate": "tanh"}, torch.bfloat16, False, False)],
    ids=["relu-f32", "relu-bf16", "relu-f64", "gelu-f16", "gelu-f32", "gelu-bf16", "gelu-f64", "gelu-tanh-bf16"],
)  # fmt: skip
def test_cpu_backend_runs_its_kernel_where_it_measured_faster(
    kind, params, dtype, kernel, kernel_avx2, channels_last, avx2_only, monkeypatch
):
    calls: list[str] = []  # torch's activation, called where the kernel is not
    activation = torch_backend.activation
    monkeypatch.setattr(torch_backend, "activation", lambda *a: (calls.append(a[1]), activation(*a))[1])
    monkeypatch.setattr(cpu_backend, "_avx2_only", lambda: avx2_only)
    x = _input(dtype, channels_last)
    counts = torch.zeros(8, 2, dtype=torch.int64)
    y = fused_activation(x, kind, counts, backend="cpu", **params)
    want = torch_activation(x, kind, params)
    if kind == "gelu":
        assert_gelu_close(y, want)
    else:
        assert_bit_equal(y, want)
    assert torch.equal(counts, count_states_reference(x, (0.0,), 1, False))
    assert calls == ([] if (kernel_avx2 if avx2_only else kernel) else [kind])


@needs_cpu
def test_the_two_calls_keep_the_gradient_and_the_graph():
    """Under autograd the count and torch's activation run inside the same autograd Function: torch's gradient."""
    x = _input(torch.bfloat16, False).nan_to_num(0.0).requires_grad_(True)
    counts = torch.zeros(8, 2, dtype=torch.int64)
    y = fused_activation(x, "gelu", counts, backend="cpu", approximate="none")
    y.sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    torch.nn.functional.gelu(ref).sum().backward()
    assert torch.equal(x.grad, ref.grad)
    assert torch.equal(counts, count_states_reference(x.detach(), (0.0,), 1, False))
