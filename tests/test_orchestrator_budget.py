"""The pruning budget, masks and prunable-layer discovery against hand-computed cases (METHOD.md section 3)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from nepenthe.orchestrator.budget import (
    allocate_budget,
    layer_irrelevance,
    mean_nonzero_magnitude,
    neuron_irrelevance,
    softmax,
)
from nepenthe.orchestrator.masks import PruningMasks
from nepenthe.orchestrator.prunable import feeding_calls, feeding_calls_in_order, feeding_layers


def _hand_softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_budget_uncapped_matches_hand_computation() -> None:
    # I = (1, 2), S = 3, R = (3, 1.5); B = 0.5 * 200 = 100; shares softmax(3, 1.5)
    budget = allocate_budget({"a": 1.0, "b": 2.0}, {"a": 100, "b": 100}, zeta=0.5)
    shares = _hand_softmax([3.0, 1.5])
    assert budget["a"].relevance == pytest.approx(3.0)
    assert budget["b"].relevance == pytest.approx(1.5)
    assert budget["a"].share == pytest.approx(shares[0])
    assert budget["a"].prune == math.floor(100 * shares[0])
    assert budget["b"].prune == math.floor(100 * shares[1])
    assert not budget["a"].capped and not budget["b"].capped


def test_budget_capped_layer_redistributes_the_rest() -> None:
    # I = (1, 2, 4), S = 7, R = (7, 3.5, 1.75); B = 0.5 * 2100 = 1050.
    # Layer a would get 1050 * 0.9658 > 100: it gives all 100, and the 950 left are shared by b, c only.
    budget = allocate_budget({"a": 1.0, "b": 2.0, "c": 4.0}, {"a": 100, "b": 1000, "c": 1000}, zeta=0.5)
    assert budget["a"].capped and budget["a"].prune == 100
    rest = _hand_softmax([3.5, 1.75])
    assert budget["b"].prune == math.floor(950 * rest[0])
    assert budget["c"].prune == math.floor(950 * rest[1])
    assert sum(b.prune for b in budget.values()) <= 1050


def test_budget_leaves_out_zero_irrelevance_and_empty_layers() -> None:
    budget = allocate_budget({"zero": 0.0, "empty": 3.0, "live": 2.0}, {"zero": 50, "empty": 0, "live": 80}, 0.25)
    assert budget["zero"].prune == 0 and budget["empty"].prune == 0
    # only "live" is in the pool: B = 0.25 * 80 = 20, share 1
    assert budget["live"].prune == 20


def test_budget_all_zero_entropy_prunes_nothing() -> None:
    budget = allocate_budget({"a": 0.0, "b": 0.0}, {"a": 10, "b": 10}, 0.5)
    assert all(b.prune == 0 for b in budget.values())


def test_budget_tiny_irrelevance_takes_the_budget_without_nan() -> None:
    budget = allocate_budget({"tiny": 1e-310, "big": 1.0}, {"tiny": 10, "big": 1000}, 0.5)
    assert budget["tiny"].prune == 10 and budget["tiny"].capped
    assert budget["big"].prune == 505 - 10


def test_budget_bad_input() -> None:
    with pytest.raises(ValueError, match="zeta"):
        allocate_budget({"a": 1.0}, {"a": 1}, 0.0)
    with pytest.raises(ValueError, match="same layers"):
        allocate_budget({"a": 1.0}, {"b": 1}, 0.5)
    with pytest.raises(ValueError, match="irrelevance of 'a'"):
        allocate_budget({"a": float("nan")}, {"a": 1}, 0.5)


def test_softmax_subtracts_max_and_handles_infinity() -> None:
    assert softmax([1000.0, 1000.0]) == pytest.approx([0.5, 0.5])
    assert softmax([math.inf, 1.0, math.inf]) == [0.5, 0.0, 0.5]


def test_irrelevance_uses_nonzero_weights_only() -> None:
    w = torch.tensor([[0.0, 2.0], [-4.0, 0.0]])
    assert mean_nonzero_magnitude(w) == pytest.approx(3.0)
    assert layer_irrelevance(0.5, w) == pytest.approx(1.5)
    assert mean_nonzero_magnitude(torch.zeros(3, 3)) == 0.0


def test_neuron_irrelevance_by_hand() -> None:
    h = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    w = torch.tensor([[2.0, 0.0], [5.0, 5.0], [-1.0, 3.0]])  # per-neuron magnitudes 2, 5, 2
    assert neuron_irrelevance(h, w, "mean") == pytest.approx((2.0 + 0.0 + 1.0) / 3)
    assert neuron_irrelevance(h, w, "sum") == pytest.approx(3.0)
    assert neuron_irrelevance(h, w, "nonconstant_mean") == pytest.approx(1.5)
    with pytest.raises(ValueError, match="3 neurons"):
        neuron_irrelevance(h, torch.ones(2, 2))


def test_masks_prune_smallest_magnitudes_and_persist() -> None:
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -3.0, 0.1], [2.0, -0.2, 1.0]]))
    masks = PruningMasks()
    assert masks.prune(model, "0", 2) == 2
    expected = torch.tensor([[0.5, -3.0, 0.0], [2.0, 0.0, 1.0]])
    assert torch.equal(model[0].weight.detach(), expected)
    with torch.no_grad():  # an optimizer step moves every weight
        model[0].weight.add_(1.0)
    masks.apply(model)
    assert model[0].weight[0, 2] == 0 and model[0].weight[1, 1] == 0
    assert masks.alive(model, "0") == 4
    assert masks.prune(model, "0", 10) == 4  # at most what is left
    assert masks.sparsity(model) == 1.0
    restored = PruningMasks()
    restored.load_state_dict(masks.state_dict())
    assert all(torch.equal(restored.masks[k], masks.masks[k]) for k in masks.masks)


def test_masks_bad_names() -> None:
    with pytest.raises(ValueError, match="no module named 'nope'"):
        PruningMasks().prune(nn.Sequential(nn.Linear(2, 2)), "nope", 1)
    with pytest.raises(ValueError, match="has no weight"):
        PruningMasks().prune(nn.Sequential(nn.ReLU()), "0", 1)


def test_resnet18_prunable_layers_are_branch_convs() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    feeds = feeding_layers(model)
    assert len(feeds) == 17
    assert feeds["relu"] == "conv1"
    for block in ("layer1.0", "layer2.0", "layer4.1"):  # layer2.0 has a downsample shortcut
        assert feeds[f"{block}.relu@0"] == f"{block}.conv1"
        assert feeds[f"{block}.relu@1"] == f"{block}.conv2"
    assert not any("downsample" in v or v == "fc" for v in feeds.values())
    # execution order restricted to the dense layers agrees with the graph walk
    allowed = {v for v in feeding_calls(model).values() if v}
    assert feeding_calls_in_order(model, torch.randn(1, 3, 32, 32), allowed) == feeding_calls(model)


@pytest.mark.slow  # building swin_t alone takes several seconds
def test_swin_and_mobilenet_prunable_layers() -> None:
    swin = feeding_layers(torchvision.models.swin_t(num_classes=10).eval())
    assert len(swin) == 12 and all(v.endswith("mlp.0") for v in swin.values())
    mnv2 = feeding_layers(torchvision.models.mobilenet_v2(num_classes=10).eval())
    assert len(mnv2) == 35 and mnv2["features.1.conv.0.2"] == "features.1.conv.0.0"


def test_timm_models_prunable_layers() -> None:
    """timm's GELU (whose forward is F.gelu) is one call site, fed by its MLP's fc1; the ReLU6 inside each
    BatchNormAct2d of timm's MobileNetV2 is fed by the conv before that norm."""
    import timm  # in requirements.txt

    convnext = feeding_layers(timm.create_model("convnext_atto", num_classes=10).eval())
    assert len(convnext) == 12 and convnext["stages.3.blocks.1.mlp.act"] == "stages.3.blocks.1.mlp.fc1"
    assert all(v.endswith("mlp.fc1") for v in convnext.values())
    mnv2 = feeding_layers(timm.create_model("mobilenetv2_100", num_classes=10).eval())
    assert len(mnv2) == 35 and mnv2["blocks.6.0.bn1.act"] == "blocks.6.0.conv_pw"
    assert mnv2["blocks.6.0.bn2.act"] == "blocks.6.0.conv_dw" and mnv2["bn2.act"] == "conv_head"
