"""shrink's constant-subgraph pass: all-zero convs and what they feed become one constant, folded into a bias."""

import copy
import json

import pytest
import torch
import torchvision
from model_helpers import random_bn
from torch import nn

import nepenthe
from nepenthe.surgery.constants import BiasAdd, ConstantMap, MapAdd

torch.set_num_threads(2)

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
BRANCH_CONVS = [f"layer{i}.{j}.conv{k}" for i in (3, 4) for j in (0, 1) for k in (1, 2)]
INNER_RELUS = [f"layer{i}.{j}.relu@0" for i in (3, 4) for j in (0, 1)]


def zero_weights(model: nn.Module, names: list[str]) -> nn.Module:
    with torch.no_grad():
        for name in names:
            model.get_submodule(name).weight.zero_()
    return model


def outputs(model: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).to(dtype)(x.to(dtype))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


def pruned_resnet18() -> nn.Module:
    """ResNet-18 whose layer3/layer4 branch convs are all zero (what the demo's budget does), inner ReLUs linearized."""
    model = zero_weights(random_bn(torchvision.models.resnet18(num_classes=10)), BRANCH_CONVS)
    with nepenthe.profile(model) as prof:
        with torch.no_grad():
            model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    # the branch ReLUs see a per-channel constant (BatchNorm of zeros): each channel stays in one state
    assert set(INNER_RELUS) <= set(prof.linearizable())
    model, _ = nepenthe.linearize(model, INNER_RELUS, profile=prof)
    return model


def test_resnet18_zero_branches_fold_into_biases():
    lin = pruned_resnet18().double()
    small, report = nepenthe.shrink(lin, X32.double(), latency=False)
    assert rel_diff(outputs(lin, X32), outputs(small, X32)) < 1e-10
    assert rel_diff(outputs(lin, X32, torch.float32), outputs(small, X32, torch.float32)) < 1e-5
    # 20 convs + fc; the 8 branch convs of layer3.* and layer4.* compute constants and go
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (21, 13)
    assert count(small, nn.Conv2d) == 12
    assert (report.before["depth"], report.after["depth"]) == (18, 12)  # stem, 2 x 4 in layer1-2, 2 downsample, fc
    constant = [d for d in report.merges if d.what.startswith("merge constant branch")]
    assert sorted(d.what.split()[4] for d in constant) == ["layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    assert all("conv1, conv2: all-zero weights" in d.what for d in constant)
    # layer3.0 / layer4.0: the constant folds into the downsample conv's bias; layer3.1 / layer4.1 add it to the
    # output of a ReLU, so a per-channel bias add stays
    assert count(small, BiasAdd) == 2 and count(small, ConstantMap) == 0 and count(small, MapAdd) == 0
    assert all(report.site_outcomes[s].startswith("removed") for s in INNER_RELUS)


def test_resnet18_plan_round_trip():
    lin = pruned_resnet18()
    small, report = nepenthe.shrink(lin, X32, latency=False)
    plan = json.loads(json.dumps(report.plan))
    fresh = random_bn(torchvision.models.resnet18(num_classes=10), seed=9)
    rebuilt = nepenthe.apply_plan(fresh, plan)
    rebuilt.load_state_dict(small.state_dict())
    assert count(rebuilt, nn.Conv2d) == count(small, nn.Conv2d) == 12
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(X32), small(X32), rtol=0, atol=0)
    # the folded constants hold for 32x32 inputs only: another size is refused, by both models, never computed
    for model in (small, rebuilt):
        with pytest.raises(ValueError, match=r"inputs of shape \(N, \*\(3, 32, 32\)\)"):
            model(torch.randn(1, 3, 48, 48))


class ConstantBranch(nn.Module):
    """x -> conv -> relu -> [branch: conv1 -> bn1 -> relu1 -> conv2 -> bn2] + skip -> relu -> pool -> fc."""

    def __init__(self, k2: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, k2, padding=k2 // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        branch = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(self.relu(branch + x)), 1))


def constant_branch(zero: list[str], k2: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return zero_weights(random_bn(ConstantBranch(k2)), zero).double()  # float64: the constants are computed in it


X8 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_nonzero_conv_after_a_constant_gives_an_exact_position_dependent_map():
    # conv1 is zero: bn1 -> relu1 (not linearized) give a per-channel constant; conv2's zero padding then makes
    # the border differ from the inside
    model = constant_branch(["conv1"])
    small, report = nepenthe.shrink(model, X8, latency=False)
    assert rel_diff(outputs(model, X8), outputs(small, X8)) < 1e-10
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (4, 2)
    assert report.before["activations"] - report.after["activations"] == 1  # relu1 acted on a constant
    (bias_map,) = [m for m in small.modules() if isinstance(m, MapAdd)]
    value = bias_map.value[0]
    assert value.shape == (6, 8, 8)
    assert not torch.equal(value[:, 0, 0], value[:, 4, 4])  # position-dependent
    plan = json.loads(json.dumps(report.plan))
    rebuilt = nepenthe.apply_plan(ConstantBranch(), plan).double()
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(X8), small(X8), rtol=0, atol=0)


def test_zero_conv_before_a_nonlinear_relu_is_exact():
    # conv1 is zero: relu1 (not linearized) clamps the negative channels of bn1's constant; a 1x1 conv2 keeps the
    # constant per-channel, so it becomes a bias add on the skip (a ReLU's output: nothing to fold it into)
    model = constant_branch(["conv1"], k2=1)
    assert float(model.bn1.bias.detach().min()) < 0 < float(model.bn1.bias.detach().max())
    small, report = nepenthe.shrink(model, X8, latency=False)
    assert rel_diff(outputs(model, X8), outputs(small, X8)) < 1e-10
    assert (report.after["conv_linear"], report.after["activations"]) == (2, 2)
    assert count(small, BiasAdd) == 1 and count(small, ConstantMap) == 0 and count(small, MapAdd) == 0


def test_zero_conv_after_live_layers_leaves_them_dead():
    # conv2 is zero: the branch is bn2's shift whatever conv1 and relu1 computed, so they go too
    model = constant_branch(["conv2"])
    small, report = nepenthe.shrink(model, X8, latency=False)
    assert rel_diff(outputs(model, X8), outputs(small, X8)) < 1e-10
    assert (report.after["conv_linear"], report.after["activations"]) == (2, 2)


def test_constant_up_to_the_output_is_repeated_over_the_batch():
    # a zero stem makes every layer after it constant: the model becomes one buffer, the same for each sample
    model = constant_branch(["stem"])
    small, report = nepenthe.shrink(model, X8, latency=False)
    y = outputs(small, X8)
    assert rel_diff(outputs(model, X8), y) < 1e-10
    assert y.shape == (3, 4) and torch.equal(y[0], y[2])
    assert report.after["conv_linear"] == 0 and count(small, ConstantMap) == 1
    assert [d.what for d in report.merges if d.what.startswith("merge constant")] == [
        "merge constant branch of the model (stem: all-zero weights; conv1, conv2, fc: applied to a constant) "
        "into a constant buffer"
    ]
