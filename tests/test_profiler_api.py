"""The profiler's API: lifecycle (model left untouched), state dicts, merging, options and errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import nepenthe
from nepenthe.activations import tracked_activation_types

torch.set_num_threads(2)


class TwiceBlock(nn.Module):
    """Calls one ReLU twice and a GELU once, like torchvision's BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        y = self.relu(y - 0.1)
        return self.gelu(self.fc(y.mean(dim=(2, 3))))


def snapshot(model: nn.Module) -> dict:
    return {
        "modules": [(name, id(m)) for name, m in model.named_modules()],
        "params": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": sum(
            len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()
        ),
    }


def assert_untouched(model: nn.Module, before: dict, x: torch.Tensor, out: torch.Tensor) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"]
    assert after["hooks"] == before["hooks"] == 0
    assert after["params"].keys() == before["params"].keys()
    assert all(torch.equal(after["params"][k], v) for k, v in before["params"].items())
    with torch.no_grad():
        assert torch.equal(model(x), out)


@pytest.mark.parametrize("fused", [False, True])
def test_model_untouched_after_exit_and_after_an_exception(fused):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    with torch.no_grad():
        out = model(x)
    with nepenthe.profile(model, fused=fused), torch.no_grad():
        model(x)
    assert_untouched(model, before, x, out)
    with pytest.raises(RuntimeError, match="boom"), nepenthe.profile(model, fused=fused), torch.no_grad():
        model(x)
        raise RuntimeError("boom")
    assert_untouched(model, before, x, out)
    # an exception inside the first forward pass (functional detection active) also cleans up
    with pytest.raises(RuntimeError), nepenthe.profile(model, fused=fused), torch.no_grad():
        model(torch.randn(2, 5, 32, 32))
    assert_untouched(model, before, x, out)
    prof = nepenthe.profile(model, fused=fused)
    with torch.no_grad():
        model(x)
    prof.remove()
    prof.remove()
    assert_untouched(model, before, x, out)
    assert len(prof.counts()) == 17  # results stay readable after remove()


def test_module_called_twice_is_named_by_call_from_the_first_forward():
    model = TwiceBlock()
    x = torch.randn(2, 3, 6, 6)
    with nepenthe.profile(model) as prof:
        model(x)
        assert list(prof.layers) == ["relu@0", "relu@1", "gelu"]
        model(x)
    infos = prof.layers
    assert [(i.module_name, i.call_index, i.channel_dim) for i in infos.values()] == [
        ("relu", 0, 1), ("relu", 1, 1), ("gelu", 0, 1)
    ]  # fmt: skip
    assert infos["relu@1"].module is model.relu and infos["relu@1"].thresholds == (0.0,)
    assert infos["gelu"].spec is nepenthe.activation_spec(model.gelu)
    assert [s.name for s in nepenthe.profiler.trace_call_sites(model, x)] == list(infos)
    assert int(prof.counts()["relu@0"].sum()) == 2 * 2 * 4 * 36


def test_state_dict_round_trip_merge_reset():
    torch.manual_seed(0)
    model = TwiceBlock()
    a, b = torch.randn(3, 3, 6, 6), torch.randn(5, 3, 6, 6)
    with nepenthe.profile(model) as both:
        model(a)
        model(b)
    with nepenthe.profile(model) as first:
        model(a)
    with nepenthe.profile(model) as second:
        model(b)
    merged = first.merge(second)
    assert all(torch.equal(merged.counts()[k], v) for k, v in both.counts().items())
    fresh = nepenthe.profile(model)
    fresh.load_state_dict(both.state_dict())
    fresh.remove()
    assert list(fresh.layers) == list(both.layers)
    assert all(torch.equal(fresh.counts()[k], v) for k, v in both.counts().items())
    assert fresh.layer_entropy() == both.layer_entropy()
    fresh.reset()
    assert all(int(c.sum()) == 0 for c in fresh.counts().values())


def test_load_state_dict_refuses_another_model_or_settings():
    model = TwiceBlock()
    with nepenthe.profile(model) as prof:
        model(torch.randn(2, 3, 6, 6))
    state = prof.state_dict()
    other = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
    with pytest.raises(ValueError, match="different model"), nepenthe.profile(other) as p:
        p.load_state_dict(state)
    with pytest.raises(ValueError, match="ignore_ties"), nepenthe.profile(model, ignore_ties=True) as p:
        p.load_state_dict(state)
    resnet, resnet34 = torchvision.models.resnet18().eval(), torchvision.models.resnet34().eval()
    with nepenthe.profile(resnet) as p18:
        resnet(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="different model"), nepenthe.profile(resnet34) as p34:
        p34.load_state_dict(p18.state_dict())
    wide = TwiceBlock()
    wide.conv = nn.Conv2d(3, 6, 3, padding=1)
    wide.fc = nn.Linear(6, 5)
    with nepenthe.profile(wide) as pw:
        wide(torch.randn(2, 3, 6, 6))
        with pytest.raises(ValueError, match="counts"):
            pw.load_state_dict(state)
    with pytest.raises(ValueError, match="not a nepenthe profile"):
        prof.load_state_dict({"layers": {}})


def test_errors_are_clear():
    with pytest.raises(ValueError, match="no activation module"):
        nepenthe.profile(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="prepare"):
        nepenthe.profile(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="model"):
        nepenthe.profile("resnet")
    with pytest.raises(ValueError, match="aggregate"):
        nepenthe.profile(TwiceBlock(), aggregate="max")
    with pytest.raises(ValueError, match="activations"):
        nepenthe.profile(TwiceBlock(), activations=["Softmax"])
    with pytest.raises(ValueError, match="activations"):
        nepenthe.profile(TwiceBlock(), activations=[nn.Softmax])
    with pytest.raises(TypeError, match="channel_dims"):
        nepenthe.profile(TwiceBlock(), channel_dims={"relu": "last"})
    with nepenthe.profile(TwiceBlock()) as prof, pytest.raises(RuntimeError, match="no tracked activation has run"):
        prof.counts()
    with pytest.raises(ValueError, match="reduction"), nepenthe.profile(TwiceBlock()) as prof:
        prof.layer_entropy("median")
    int_model = nn.Sequential(nn.ReLU())
    with pytest.raises(TypeError, match="floating"), nepenthe.profile(int_model):
        int_model(torch.arange(6).reshape(2, 3))
    with pytest.raises(RuntimeError, match="torch.distributed"), nepenthe.profile(TwiceBlock()) as prof:
        prof.all_reduce()


def test_activations_narrow_and_extend():
    model = TwiceBlock()
    x = torch.randn(2, 3, 6, 6)
    with nepenthe.profile(model, activations=["gelu"]) as prof:
        model(x)
    assert list(prof.layers) == ["gelu"]
    with nepenthe.profile(model, activations=[nn.ReLU]) as prof:
        model(x)
    assert list(prof.layers) == ["relu@0", "relu@1"]

    class Step(nn.Module):
        def forward(self, x):
            return (x > 0.5).to(x.dtype)

    stepped = nn.Sequential(nn.Linear(3, 4), Step(), nn.ReLU())
    with nepenthe.profile(stepped, activations={Step: (0.5,), nn.ReLU: (-1.0, 0.0)}) as prof:
        stepped(torch.randn(7, 3))
    assert Step in tracked_activation_types()
    assert prof.layers["1"].thresholds == (0.5,) and prof.layers["2"].thresholds == (-1.0, 0.0)
    assert prof.counts()["2"].shape == (4, 3)


def test_channel_dims_override_by_layer_and_by_module():
    model = TwiceBlock()
    x = torch.randn(2, 3, 6, 6)
    with nepenthe.profile(model, channel_dims={"relu@1": -1, "gelu": 0}) as prof:
        model(x)
    assert [i.channel_dim for i in prof.layers.values()] == [1, 3, 0]
    assert prof.counts()["relu@1"].shape == (6, 2) and prof.counts()["gelu"].shape == (2, 2)
    with pytest.raises(ValueError, match="channel_dims"), nepenthe.profile(model, channel_dims={"relu": 7}):
        model(x)
    with (
        pytest.warns(UserWarning, match=r"\['rleu'\] match no activation"),
        nepenthe.profile(model, channel_dims={"rleu": 1}),
    ):
        model(x)


def test_batch_mean_averages_per_forward_entropies():
    model = nn.Sequential(nn.ReLU())
    batches = [torch.tensor([[1.0, -1.0], [1.0, 1.0]]), torch.tensor([[-1.0, 1.0], [-1.0, -1.0]])]
    with nepenthe.profile(model, aggregate="batch_mean") as prof:
        for x in batches:
            model(x)
    # neuron 0: batch entropies 0 and 0 -> 0 (pooled it would be 1 bit); neuron 1: 1 and 1 -> 1
    assert prof.entropy()["0"].tolist() == [0.0, 1.0]
    assert prof.counts()["0"].tolist() == [[2, 2], [2, 2]]
    with nepenthe.profile(model) as pooled:
        for x in batches:
            model(x)
    assert pooled.entropy()["0"].tolist() == [1.0, 1.0]
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    with nepenthe.profile(model) as prof:
        model(torch.tensor([[1.0], [1.0], [-1.0], [2.0]]))
    assert prof.layer_entropy("nonconstant_mean")["0"] == pytest.approx(h, abs=1e-15)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(x))
        x = torch.relu(x - 0.5).relu()
        x = F.gelu(x, approximate="tanh") + F.leaky_relu(x, 0.2) + F.hardtanh(x, -0.5, 0.5)
        return self.act(F.silu(x) - 0.2)


def test_functional_activations_are_reported_and_prepare_makes_them_modules():
    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(5, 4)
    with pytest.warns(UserWarning, match=r"7 functional activation call\(s\).*relu in <root> \(x3\).*prepare"):
        with nepenthe.profile(model) as prof:
            model(x)
    assert list(prof.layers) == ["act"]
    prepared = nepenthe.prepare(model)
    assert torch.equal(prepared(x), model(x))
    assert isinstance(model.act, nn.ReLU) and not hasattr(model, "relu_f0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with nepenthe.profile(prepared) as prof:
            prepared(x)
    names = list(prof.layers)
    assert names == ["relu_f0", "relu_f1", "relu_f2", "gelu_f0", "leaky_relu_f0", "hardtanh_f0", "silu_f0", "act"]
    assert prepared.gelu_f0.approximate == "tanh" and prepared.leaky_relu_f0.negative_slope == 0.2
    assert (prepared.hardtanh_f0.min_val, prepared.hardtanh_f0.max_val) == (-0.5, 0.5)
    # the first relu's states are those of fc's output
    assert torch.equal(prof.counts()["relu_f0"], nepenthe.count_states(model.fc(x).detach(), backend="torch"))


def test_prepare_names_functional_calls_after_their_module_and_refuses_untraceable_models():
    model = torchvision.models.densenet121().eval()
    prepared = nepenthe.prepare(model)
    assert isinstance(prepared.relu_f0, nn.ReLU)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(prepared(x), model(x))

    class Branchy(nn.Module):
        def forward(self, x):
            return F.relu(x) if x.sum() > 0 else x

    with pytest.raises(RuntimeError, match="could not trace"):
        nepenthe.prepare(Branchy())
    with pytest.raises(TypeError, match="model"):
        nepenthe.prepare(F.relu)


def test_hook_mode_under_torch_compile():
    torch.manual_seed(0)
    model = TwiceBlock().eval()
    x = torch.randn(2, 3, 6, 6)
    with nepenthe.profile(model) as eager:
        model(x)
        model(x)
    torch._dynamo.reset()
    with nepenthe.profile(model) as prof:
        compiled = torch.compile(model, backend="aot_eager")
        compiled(x)
        compiled(x)
    assert list(prof.layers) == list(eager.layers)
    assert all(torch.equal(prof.counts()[k], v) for k, v in eager.counts().items())


@pytest.mark.slow
def test_hook_mode_under_torch_compile_inductor():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 32, 32)
    with nepenthe.profile(model) as eager, torch.no_grad():
        model(x)
    torch._dynamo.reset()
    with nepenthe.profile(model) as prof, torch.no_grad():
        torch.compile(model)(x)
    assert all(torch.equal(prof.counts()[k], v) for k, v in eager.counts().items())


def test_a_module_shared_under_two_names_is_one_module_named_by_its_first_name():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    x = torch.randn(4, 3)
    with nepenthe.profile(model) as prof:
        model(x)
    assert list(prof.layers) == ["1@0", "1@1"]
    assert [s.name for s in nepenthe.profiler.trace_call_sites(model, x)] == ["1@0", "1@1"]


def test_names_that_change_after_the_first_pass_are_warned_about():
    class Sometimes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x, twice=False):
            return self.relu(self.relu(x) - 1) if twice else self.relu(x)

    model = Sometimes()
    with nepenthe.profile(model) as prof:
        model(torch.randn(2, 3))
        assert list(prof.layers) == ["relu"]
        with pytest.warns(UserWarning, match="now named 'relu@0'"):
            model(torch.randn(2, 3), twice=True)
    assert list(prof.layers) == ["relu@0", "relu@1"]
