"""``count_states`` remembers its checked arguments per (dtype, shape, strides, channel_dim, thresholds): a
remembered plan must never let bad input through or count a new tensor of the same key wrongly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nepenthe.kernels import available_backends, count_states, dispatch
from nepenthe.kernels.count import counter_for
from nepenthe.kernels.plan import _plans, count_plan
from nepenthe.kernels.reference import count_states_reference


def test_same_key_new_values_counts_afresh():
    a, b = torch.randn(4, 6, 5, 5), torch.randn(4, 6, 5, 5) + 1.0
    assert torch.equal(count_states(a), count_states_reference(a, (0.0,), 1, False))
    assert torch.equal(count_states(b), count_states_reference(b, (0.0,), 1, False))


def test_plan_is_reused_for_the_same_key():
    x = torch.randn(3, 5, 7)
    assert count_plan(x, (0.0, 1.0), 1) is count_plan(torch.randn(3, 5, 7), (0.0, 1.0), 1)
    assert count_plan(x, (0.0, 1.0), 1) is not count_plan(x, (0.0, 1.0), 2)
    assert count_plan(x, (0.0, 1.0), 1) is not count_plan(x.transpose(0, 2), (0.0, 1.0), 1)


def test_failing_key_is_never_stored():
    x = torch.randn(2, 3)
    for _ in range(2):
        with pytest.raises(ValueError, match="strictly increasing"):
            count_states(x, (1.0, 0.0))
        with pytest.raises(ValueError, match="out of range"):
            count_states(x, channel_dim=2)
    assert not any(key[-1] == (1.0, 0.0) or (key[1] == x.shape and key[3] == 2) for key in _plans)


def test_bool_channel_dim_is_refused_after_an_int_one_was_planned():
    x = torch.randn(2, 3)
    count_states(x, channel_dim=1)
    with pytest.raises(TypeError, match="channel_dim must be an int"):
        count_states(x, channel_dim=True)


def test_list_and_tensor_thresholds_count_as_the_tuple():
    x = torch.randn(5, 4, 3)
    want = count_states_reference(x, (-0.5, 0.5), 1, False)
    assert torch.equal(count_states(x, [-0.5, 0.5]), want)
    assert torch.equal(count_states(x, torch.tensor([-0.5, 0.5])), want)
    assert torch.equal(count_states(x, (-0.5, 0.5)), want)


def test_layout_that_needs_a_copy_counts_correctly_every_time():
    base = torch.randn(4, 6, 5, 7)
    x = base.permute(2, 1, 3, 0)[::2, :, 1:]  # three non-channel strides that do not merge
    assert count_plan(x, (0.0,), 1).view is None
    for _ in range(2):
        assert torch.equal(count_states(x), count_states_reference(x, (0.0,), 1, False))


def test_empty_tensor_keeps_given_counts():
    counts = torch.ones(3, 2, dtype=torch.int64)
    for _ in range(2):
        assert count_states(torch.empty(0, 3), counts=counts) is counts
    assert torch.equal(counts, torch.ones(3, 2, dtype=torch.int64))


def test_prepared_counters_are_kept_per_backend_and_ties_flag():
    x = torch.randn(2, 3, 4)
    plan = count_plan(x, (0.0,), 1)
    torch_backend = dispatch.select_backend(x.device, "torch")
    fake = SimpleNamespace(NAME="fake", count=torch_backend.count)  # a test's stand-in backend, like the emulated one
    first = counter_for(plan, torch_backend, False)
    assert counter_for(plan, torch_backend, False) is first
    assert counter_for(plan, torch_backend, True) is not first
    assert counter_for(plan, fake, False) is not first
    want = count_states_reference(x, (0.0,), 1, False)
    assert torch.equal(counter_for(plan, fake, False)(x, None), want)


def test_ties_flag_switches_on_one_plan():
    x = torch.tensor([[0.0, 1.0, -1.0, 0.0], [2.0, 0.0, 0.0, -3.0]]).repeat(3, 1)  # (6, 4): ties in every channel
    for backend in available_backends("cpu"):
        for ignore_ties in (False, True, False, True):
            want = count_states_reference(x, (0.0,), 1, ignore_ties)
            assert torch.equal(count_states(x, ignore_ties=ignore_ties, backend=backend), want), (backend, ignore_ties)


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the cpu extension did not load")
def test_cpu_fresh_counts_never_keep_the_allocators_garbage():
    x = torch.randn(8, 1280, 7, 7)
    want = count_states_reference(x, (0.0, 6.0), 1, False)
    for _ in range(4):  # freed int64 memory of the counts' size, full of garbage, is what torch.empty hands back
        garbage = torch.full((1280, 3), 7**20, dtype=torch.int64)
        del garbage
        assert torch.equal(count_states(x, (0.0, 6.0), backend="cpu"), want)


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the cpu extension did not load")
def test_cpu_extension_clears_counts_only_when_asked():
    from nepenthe.kernels import cpu_backend

    x = torch.randn(5, 3, 4)
    plan = count_plan(x, (0.0,), 1)
    want = count_states_reference(x, (0.0,), 1, False)
    kt = plan.kernel_thresholds
    for clear in (True, False):
        counts = torch.full((3, 2), 1000, dtype=torch.int64)
        args = (x.data_ptr(), 0, plan.view.args, kt.greater, kt.tie, False, counts.data_ptr(), 1)
        cpu_backend._ext.count(*args, clear)
        assert torch.equal(counts, want if clear else want + 1000)
