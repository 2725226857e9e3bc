"""``fused_activation`` remembers its checked arguments per (dtype, shape, strides, channel_dim, kind, params,
thresholds, ignore_ties): a remembered plan must never let bad input through, nor give a new tensor or other
arguments of a similar key the wrong output or counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nepenthe.kernels import available_backends, fused_activation, torch_backend
from nepenthe.kernels.fused import run_fused
from nepenthe.kernels.fused_plan import _plans, fused_plan
from nepenthe.kernels.reference import count_states_reference

CPU_BACKENDS = [b for b in available_backends("cpu") if b != "triton"]  # Triton: its own tests, interpreted


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t


def assert_fused(x, kind, params, want_y, thresholds, backend, ignore_ties=False) -> torch.Tensor:
    counts = torch.zeros(x.shape[1], len(thresholds) + 1, dtype=torch.int64)
    y = fused_activation(x, kind, counts, ignore_ties=ignore_ties, backend=backend, **params)
    assert y.shape == x.shape
    assert torch.equal(bits(y), bits(want_y)), (kind, params, backend)
    assert torch.equal(counts, count_states_reference(x, thresholds, 1, ignore_ties)), (kind, params, backend)
    return y


def test_plan_is_reused_for_the_same_key_only():
    x = torch.randn(3, 5, 7)
    plan = fused_plan(x, "hardtanh", {"min_val": 0.0, "max_val": 6.0}, None, 1, False)
    assert fused_plan(torch.randn(3, 5, 7), "hardtanh", {"min_val": 0.0, "max_val": 6.0}, None, 1, False) is plan
    others = [
        fused_plan(x, "hardtanh", {"min_val": 0.0, "max_val": 5.0}, None, 1, False),
        fused_plan(x, "hardtanh", {"min_val": 0.0, "max_val": 6.0}, (0.0,), 1, False),
        fused_plan(x, "hardtanh", {"min_val": 0.0, "max_val": 6.0}, None, 1, True),
        fused_plan(x, "hardtanh", {"min_val": 0.0, "max_val": 6.0}, None, 2, False),
        fused_plan(x.transpose(0, 2), "hardtanh", {"min_val": 0.0, "max_val": 6.0}, None, 1, False),
        fused_plan(x.double(), "hardtanh", {"min_val": 0.0, "max_val": 6.0}, None, 1, False),
    ]
    assert all(other is not plan for other in others)
    assert [p.values for p in others[:3]] == [(0.0, 5.0), (0.0,), (0.0, 6.0)] and others[2].ignore_ties


def test_failing_key_is_never_stored():
    x = torch.randn(2, 3, 17)  # a shape no other test of this process plans
    counts = torch.zeros(3, 3, dtype=torch.int64)
    for _ in range(2):
        with pytest.raises(ValueError, match="min_val < max_val"):
            fused_activation(x, "hardtanh", counts, min_val=1.0, max_val=1.0)
        with pytest.raises(ValueError, match="kind must be one of"):
            fused_activation(x, "swish", counts)
        with pytest.raises(ValueError, match="needs parameter"):
            fused_activation(x, "leaky_relu", counts)
        with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['negative_slop'\]"):
            fused_activation(x, "leaky_relu", counts, negative_slope=0.1, negative_slop=0.2)
        with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['aproximate'\] \(it takes \['approximate'\]\)"):
            fused_activation(x, "gelu", counts, aproximate="tanh")
        with pytest.raises(ValueError, match=r"fused relu got unknown parameter\(s\) \['slope'\] \(it takes none\)"):
            fused_activation(x, "relu", counts, slope=0.1)
        with pytest.raises(ValueError, match="strictly increasing"):
            fused_activation(x, "relu", counts, thresholds=(1.0, 0.0))
    ours = [key for key in _plans if key[1] == x.shape]
    assert not any(key[4] in ("swish", "leaky_relu") or key[6] == (1.0, 0.0) for key in ours)
    assert not any(key[4] == "hardtanh" and dict(key[5]) == {"min_val": 1.0, "max_val": 1.0} for key in ours)


def test_counts_of_the_wrong_shape_are_refused_on_a_planned_key():
    x = torch.randn(4, 3, 5)
    fused_activation(x, "relu", torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"counts must have shape \(3, 2\)"):
        fused_activation(x, "relu", torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="counts must be int64"):
        fused_activation(x, "relu", torch.zeros(3, 2, dtype=torch.int32))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_same_key_new_values_and_negative_zero_bounds(backend):
    """-0.0 equals 0.0 as a dict key, but hardtanh's output bits differ: each must get its own."""
    a, b = torch.randn(4, 6, 5, 5) * 4, torch.randn(4, 6, 5, 5) * 4 + 1.0
    for x in (a, b):
        for lo in (0.0, -0.0, 0.0, -0.0):
            params = {"min_val": lo, "max_val": 6.0}
            assert_fused(x, "hardtanh", params, F.hardtanh(x, lo, 6.0), (lo, 6.0), backend)
        assert_fused(x, "leaky_relu", {"negative_slope": 0.25}, F.leaky_relu(x, 0.25), (0.0,), backend)
        assert_fused(x, "leaky_relu", {"negative_slope": 0.5}, F.leaky_relu(x, 0.5), (0.0,), backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_layouts_of_the_fast_and_the_general_path(backend):
    base = torch.randn(4, 6, 5, 7) * 3
    dense = [base, base.to(memory_format=torch.channels_last), base.permute(0, 1, 3, 2), base[:1]]
    # gaps, a layout that needs a copy, overlapping channels
    strided = [base[:, :, :1], base.permute(2, 1, 3, 0)[::2, :, 1:], base[:, :1].expand(4, 6, 5, 7)]
    for x in dense + strided:
        is_dense = any(x is d for d in dense)
        assert (fused_plan(x, "relu", {}, None, 1, False).view is not None) == is_dense, x.stride()
        for _ in range(2):
            y = assert_fused(x, "relu", {}, F.relu(x), (0.0,), backend)
            assert y.stride() == x.stride() or not is_dense  # the fast path's y: empty_like(x)


def test_backend_without_prepare_gets_a_job_per_call_and_identity_is_checked():
    x = torch.randn(3, 4, 5)
    plan = fused_plan(x, "relu", {}, None, 1, False)
    jobs = []

    def fused_forward(job):
        jobs.append(job)
        torch_backend.fused_forward(job)

    fake = SimpleNamespace(fused_forward=fused_forward)
    for _ in range(2):
        counts = torch.zeros(4, 2, dtype=torch.int64)
        y = run_fused(x, counts, plan, fake)
        assert torch.equal(y, F.relu(x)) and torch.equal(counts, count_states_reference(x, (0.0,), 1, False))
    assert len(jobs) == 2 and jobs[0].y_view == plan.view
    assert run_fused(x, torch.zeros(4, 2, dtype=torch.int64), plan, torch_backend) is not None
    assert len(jobs) == 2  # the torch backend's own forward, not the fake's


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradient_through_a_planned_key(backend):
    x = (torch.randn(2, 3, 4, 4) * 4).requires_grad_(True)
    for _ in range(2):
        counts = torch.zeros(3, 3, dtype=torch.int64)
        y = fused_activation(x, "hardtanh", counts, backend=backend, min_val=-1.0, max_val=2.0)
        (grad,) = torch.autograd.grad((y * y).sum(), x)
        xr = x.detach().requires_grad_(True)
        (want,) = torch.autograd.grad((F.hardtanh(xr, -1.0, 2.0) ** 2).sum(), xr)
        assert torch.equal(grad, want)
