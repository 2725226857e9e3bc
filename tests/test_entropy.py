"""Entropy against hand computation in float64."""

import math

import pytest
import torch

from nepenthe.entropy import dominant_state, is_linearizable, layer_entropy, neuron_entropy, seen_states


def _by_hand(row: list[int]) -> float:
    total = sum(row)
    return -sum(n / total * math.log2(n / total) for n in row if n)


def test_neuron_entropy_matches_hand_computation():
    rows = [[3, 1], [5, 0], [1, 1], [2, 3, 5], [0, 0, 7]]
    for row in rows:
        got = neuron_entropy(torch.tensor([row]))
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(_by_hand(row), abs=1e-15)


def test_constant_neurons_have_exactly_zero_entropy_and_no_negative_zero():
    h = neuron_entropy(torch.tensor([[4, 0], [0, 9]]))
    assert torch.equal(h, torch.zeros(2, dtype=torch.float64))
    assert not torch.signbit(h).any()


def test_layer_reductions():
    counts = torch.tensor([[1, 1], [4, 0], [1, 3]])
    h = [_by_hand([1, 1]), 0.0, _by_hand([1, 3])]
    assert layer_entropy(counts) == pytest.approx(sum(h) / 3)
    assert layer_entropy(counts, "sum") == pytest.approx(sum(h))
    assert layer_entropy(counts, "nonconstant_mean") == pytest.approx((h[0] + h[2]) / 2)
    assert layer_entropy(torch.tensor([[2, 0]]), "nonconstant_mean") == 0.0
    with pytest.raises(ValueError, match="reduction"):
        layer_entropy(counts, "median")


def test_linearizable_needs_exactly_one_state_per_neuron():
    assert is_linearizable(torch.tensor([[5, 0], [0, 2]]))
    assert not is_linearizable(torch.tensor([[5, 1], [0, 2]]))
    assert not is_linearizable(torch.tensor([[0, 0], [0, 2]]))  # a neuron never seen is not proof
    assert torch.equal(seen_states(torch.tensor([[5, 1, 0], [0, 0, 2]])), torch.tensor([2, 1]))
    assert torch.equal(dominant_state(torch.tensor([[5, 1, 0], [0, 0, 2]])), torch.tensor([0, 2]))


def test_bad_counts_are_refused():
    with pytest.raises(TypeError, match="integer"):
        neuron_entropy(torch.ones(2, 2))
    with pytest.raises(ValueError, match="2-D"):
        neuron_entropy(torch.ones(2, dtype=torch.int64))
