"""linearize: per-channel affine maps from state counts, shared modules per call site, and bad input."""

import io

import pytest
import torch
from torch import nn

import nepenthe
from nepenthe.surgery import CallSiteDispatch, ChannelAffine


def one_state_counts(states: list[int], k: int) -> torch.Tensor:
    counts = torch.zeros(len(states), k, dtype=torch.int64)
    counts[torch.arange(len(states)), torch.tensor(states)] = 5
    return counts


class Net(nn.Module):
    """conv -> act -> conv, and a shared ReLU called twice (like torchvision's BasicBlock)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = act
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.act(self.conv(x))
        return self.relu(self.conv2(self.relu(y)) + y)


X = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "act, states, k, slope, intercept, exact",
    [
        (nn.ReLU(), [0, 1, 1, 0], 2, [0.0, 1.0, 1.0, 0.0], [0.0] * 4, True),
        (nn.ReLU6(), [0, 1, 2, 1], 3, [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 6.0, 0.0], True),
        (nn.LeakyReLU(0.1), [0, 1, 0, 1], 2, [0.1, 1.0, 0.1, 1.0], [0.0] * 4, True),
        (nn.Hardsigmoid(), [0, 1, 2, 1], 3, [0.0, 1 / 6, 0.0, 1 / 6], [0.0, 0.5, 1.0, 0.5], True),
        (nn.GELU(), [0, 1, 1, 0], 2, [0.0, 1.0, 1.0, 0.0], [0.0] * 4, False),
    ],
)
def test_affine_map_per_channel(act, states, k, slope, intercept, exact):
    model = Net(act)
    conv_out = model.conv(X).detach()
    model, report = nepenthe.linearize(model, ["act"], profile={"act": one_state_counts(states, k)})
    assert isinstance(model.act, ChannelAffine)
    expected = conv_out * torch.tensor(slope).view(1, 4, 1, 1) + torch.tensor(intercept).view(1, 4, 1, 1)
    torch.testing.assert_close(model.act(conv_out), expected)
    assert report.sites[0].exact is exact
    assert (report.approximate == ["act"]) is (not exact)


def test_prelu_per_channel_slope():
    prelu = nn.PReLU(4)
    prelu.weight.data = torch.tensor([0.1, 0.2, 0.3, 0.4])
    model, _ = nepenthe.linearize(Net(prelu), ["act"], profile={"act": one_state_counts([0, 0, 1, 0], 2)})
    torch.testing.assert_close(model.act.scale, torch.tensor([0.1, 0.2, 1.0, 0.4]))


def test_shared_module_linearized_per_call_site():
    model = Net(nn.Identity())
    with torch.no_grad():
        conv_out = model.conv(X)
        # oracle: the first call of the shared ReLU becomes "channel 0 off, others on"; the second stays ReLU
        first = conv_out * torch.tensor([0.0, 1, 1, 1]).view(1, 4, 1, 1)
        expected = torch.relu(model.conv2(first) + conv_out)
    counts = {"relu@0": one_state_counts([0, 1, 1, 1], 2), "relu@1": one_state_counts([1, 1, 1, 1], 2)}
    model, _ = nepenthe.linearize(model, ["relu@0"], profile=counts)
    assert isinstance(model.relu, CallSiteDispatch)
    with torch.no_grad():
        for _ in range(2):  # the call counter restarts every forward pass
            torch.testing.assert_close(model(X), expected)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        torch.testing.assert_close(torch.load(buf, weights_only=False)(X), expected)


def test_trace_names_each_call_site_of_a_shared_module():
    """shrink's reports name a shared module's calls as profiles do (relu@1), not by the traced module
    (relu.original, the calls a CallSiteDispatch leaves to the original ReLU)."""
    from nepenthe.surgery.trace import trace

    def sites(model):
        return [(n.target, n.meta.get("call_site")) for n in trace(model).graph.nodes if n.op == "call_module"]

    model = Net(nn.Identity())
    assert sites(model) == [("conv", None), ("act", None), ("relu", "relu@0"), ("conv2", None), ("relu", "relu@1")]
    counts = {"relu@0": one_state_counts([0, 1, 1, 1], 2), "relu@1": one_state_counts([1, 1, 1, 1], 2)}
    model, _ = nepenthe.linearize(model, ["relu@0"], profile=counts)
    assert sites(model)[2:] == [("relu.sites.0", "relu@0"), ("conv2", None), ("relu.original", "relu@1")]


def test_without_profile_becomes_identity_and_says_so():
    model, report = nepenthe.linearize(Net(nn.ReLU()), "act")
    assert model.act.is_identity()
    assert report.sites[0].source.startswith("identity") and not report.sites[0].exact
    assert "act" in str(report)


def test_unknown_layer_lists_close_matches():
    with pytest.raises(ValueError, match=r"layers: no layer named 'actt'.*'act'"):
        nepenthe.linearize(Net(nn.ReLU()), ["actt"])
    with pytest.raises(ValueError, match="in the profile"):
        nepenthe.linearize(Net(nn.ReLU()), ["relu@0"], profile={"act": one_state_counts([0, 1, 1, 1], 2)})


def test_not_linearizable_refused_unless_forced():
    counts = torch.tensor([[3, 0], [2, 4], [0, 1], [1, 1]])
    with pytest.raises(ValueError, match=r"not linearizable.*2 of 4 neurons.*neuron 1 counts \[2, 4\].*force=True"):
        nepenthe.linearize(Net(nn.ReLU()), ["act"], profile={"act": counts})
    model, report = nepenthe.linearize(Net(nn.ReLU()), ["act"], profile={"act": counts}, force=True)
    assert model.act.scale.tolist() == [0.0, 1.0, 1.0, 0.0]  # the most frequent state (ties: the first)
    assert not report.sites[0].exact and "forced" in report.sites[0].note


def test_not_an_activation_and_activation_without_pieces():
    with pytest.raises(ValueError, match="no layer named 'conv'"):
        nepenthe.linearize(Net(nn.ReLU()), ["conv"])

    class Step(nn.Module):
        def forward(self, x):
            return (x > 0).to(x.dtype)

    nepenthe.register_activation(Step, thresholds=(0.0,))
    with pytest.raises(ValueError, match="registered without pieces"):
        nepenthe.linearize(Net(Step()), ["act"], profile={"act": one_state_counts([0, 1, 1, 0], 2)})


def test_bad_profile_types():
    with pytest.raises(TypeError, match="profile must be"):
        nepenthe.linearize(Net(nn.ReLU()), ["act"], profile=[1, 2])
    with pytest.raises(ValueError, match="integer"):
        nepenthe.linearize(Net(nn.ReLU()), ["act"], profile={"act": torch.ones(4, 2)})
    with pytest.raises(TypeError, match="layers must be"):
        nepenthe.linearize(Net(nn.ReLU()), [3])


def test_linearizing_twice_is_refused():
    model, _ = nepenthe.linearize(Net(nn.ReLU()), ["act"])
    with pytest.raises(ValueError, match="already linearized"):
        nepenthe.linearize(model, ["act"])


def test_unknown_pattern_is_left_unmerged_and_reported():
    class PoolNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.act = nn.ReLU()
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.b(nn.functional.max_pool2d(self.act(self.a(x)), 2))

    model, _ = nepenthe.linearize(PoolNet(), ["act"], profile={"act": one_state_counts([0, 1, 1, 1], 2)})
    small, report = nepenthe.shrink(model, torch.randn(2, 3, 6, 6), latency=False)
    assert report.after["conv_linear"] == 2
    assert "max_pool2d" in report.site_outcomes["act"]


def test_shrink_bad_input():
    model = Net(nn.ReLU())
    with pytest.raises(TypeError, match="example_input"):
        nepenthe.shrink(model, [1, 2, 3])
    with pytest.raises(ValueError, match="latency_batch"):
        nepenthe.shrink(model, X, latency_batch=0)

    class Untraceable(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(RuntimeError, match="torch.fx trace"):
        nepenthe.shrink(Untraceable(), X, latency=False)


def test_plan_for_another_architecture_is_refused(tmp_path):
    model, _ = nepenthe.linearize(Net(nn.ReLU()), ["act"], profile={"act": one_state_counts([0, 1, 1, 1], 2)})
    small, report = nepenthe.shrink(model, X, latency=False)
    nepenthe.save_plan(report.plan, tmp_path / "plan.json")
    plan = nepenthe.load_plan(tmp_path / "plan.json")
    rebuilt = nepenthe.apply_plan(Net(nn.ReLU()), plan)
    rebuilt.load_state_dict(small.state_dict())
    torch.testing.assert_close(rebuilt(X), small(X))
    with pytest.raises(ValueError, match="made for Net"):
        nepenthe.apply_plan(nn.Sequential(nn.ReLU()), plan)
    with pytest.raises(ValueError, match="not a nepenthe shrink plan"):
        nepenthe.apply_plan(Net(nn.ReLU()), {"edits": []})


class ReluThrice(nn.Module):
    """One ReLU module called three times per forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.c(self.relu(self.b(self.relu(self.a(x))))))


def test_counts_naming_only_the_first_calls_of_a_module_leave_its_last_call_alone():
    """Counts for relu@0 and relu@1 only (no Profile saying there are three calls): call 2 stays a ReLU. Before,
    the dispatch wrapped at two calls, and call 2 ran call 0's affine map."""
    model = ReluThrice()
    on = torch.tensor([[0, 5]] * 4)
    lin, _ = nepenthe.linearize(model, ["relu@0", "relu@1"], profile={"relu@0": on, "relu@1": on})
    x = torch.randn(6, 4)
    with torch.no_grad():
        want = torch.relu(model.c(model.b(model.a(x))))  # calls 0 and 1 are identities
        torch.testing.assert_close(lin(x), want, rtol=0, atol=0)
        torch.testing.assert_close(lin(x), want, rtol=0, atol=0)  # the next forward starts at call 0 again
        small, _ = nepenthe.shrink(lin, x, latency=False)
        torch.testing.assert_close(small(x), want, rtol=1e-6, atol=1e-6)
