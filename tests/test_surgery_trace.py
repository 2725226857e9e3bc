"""shrink's trace of a model whose control flow depends on shapes: run with the example input alongside, it takes
the example's branches, and the shrunk model holds (and is guarded) for that input shape; control flow on the data,
or on the batch size, is still refused."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nepenthe
from nepenthe.orchestrator.prunable import feeding_layers
from nepenthe.surgery.trace import SPECIALIZED, trace

torch.set_num_threads(2)


class WindowPadded(nn.Module):
    """A conv, then linears over the positions of a map padded to a multiple of 4 when it is not one (control flow on
    H and W, as windowed attention does)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.mix = nn.Linear(8, 8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        h, w = x.shape[-2:]
        if h % 4 or w % 4:
            x = F.pad(x, (0, (4 - w % 4) % 4, 0, (4 - h % 4) % 4))
        assert len(x.shape) == 4
        scale = int(x.shape[1]) ** -0.5
        x = self.head(self.act(self.mix(x.permute(0, 2, 3, 1) * scale)))
        return x.mean((1, 2))


def test_shape_dependent_control_flow_is_traced_for_the_example_shape_and_guarded():
    model = WindowPadded().eval()
    x = torch.randn(2, 3, 10, 9)
    with pytest.raises(Exception):  # noqa: B017 - plain fx cannot trace it
        torch.fx.symbolic_trace(copy.deepcopy(model))
    gm = trace(copy.deepcopy(model), x)
    assert gm.meta[SPECIALIZED] == (3, 10, 9)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    on = {"relu": torch.tensor([[0, 5]] * 8), "act": torch.tensor([[0, 5]] * 8)}
    lin, _ = nepenthe.linearize(model, ["relu", "act"], profile=on)
    small, report = nepenthe.shrink(lin, x, latency=False)
    assert report.plan["input_shape"] == [3, 10, 9]
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (3, 2)  # mix and head merged
    with torch.no_grad():
        torch.testing.assert_close(small(x), lin(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"holds for inputs of shape \(N, \*\(3, 10, 9\)\) only"):
        small(torch.randn(1, 3, 12, 12))
    rebuilt = nepenthe.apply_plan(WindowPadded().eval(), report.plan)
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), small(x), rtol=0, atol=0)


class Cached(nn.Module):
    """Caches a tensor computed from a parameter on its first eval forward (as timm's TinyViT caches attention
    biases): a trace would leave a proxy there."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.fc(x) + self.cache.setdefault("bias", self.fc.bias * 2)
        return self.fc(x) + self.fc.bias * 2


def test_a_trace_leaves_no_proxy_in_the_model():
    """Every nepenthe trace (shrink's, prepare's, the pruning budget's layer walk) derives from ActivationTracer."""
    model = Cached().eval()
    trace(model)
    assert model.cache == {}
    nepenthe.prepare(model)
    feeding_layers(model)
    assert model.cache == {}
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(model)(x), model.fc(x) + model.fc.bias * 2)


def test_the_example_run_leaves_the_model_and_the_input_as_they_were():
    """A model in training mode that writes into its input: the runs of the example (trace, batch check) update
    neither its BatchNorm nor the example."""
    model = nn.Sequential(nn.ReLU(inplace=True), nn.BatchNorm2d(3), WindowPadded()).train()
    x = torch.randn(2, 3, 10, 9)
    kept_x, kept = x.clone(), copy.deepcopy(model.state_dict())
    gm = trace(model, x)
    assert SPECIALIZED in gm.meta and torch.equal(x, kept_x)
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())


class LazyPositions(nn.Module):
    """Builds a table of positions on its first forward, in place of a placeholder buffer (as timm's ConViT builds its
    relative positions), and expands it by the batch size: a trace must see the built table, and leave the
    placeholder."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.register_buffer("positions", torch.zeros(1, 1, 1), persistent=False)
        self.mix = nn.Linear(1, 4)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, N)
        B, N = x.shape
        if self.positions.shape[1] != N:
            self.positions = torch.arange(N, dtype=x.dtype).view(1, N, 1) / N  # not from a proxy: built eagerly
        p = self.positions.expand(B, -1, -1)
        return self.head(self.act(self.mix(p + x.unsqueeze(-1))))


def test_a_buffer_built_on_the_first_forward_is_traced_as_built_and_the_model_keeps_its_own():
    model = LazyPositions().eval()
    placeholder = model.positions
    x = torch.randn(2, 6)
    gm = trace(model, x)
    assert gm.meta[SPECIALIZED] == (6,)
    assert model.positions is placeholder and torch.equal(placeholder, torch.zeros(1, 1, 1))
    x3 = torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(gm(x3), model(x3), rtol=0, atol=0)
        lin, _ = nepenthe.linearize(model, ["act"], profile={"act": torch.tensor([[0, 5]] * 4)})
        small, report = nepenthe.shrink(lin, x, latency=False)
        torch.testing.assert_close(small(x3), lin(x3), rtol=1e-6, atol=1e-6)
    assert report.site_outcomes == {"act": "removed (identity map)"}


class BatchBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 2 if x.shape[0] == 1 else self.fc(x)


def test_control_flow_on_the_batch_size_is_refused():
    with pytest.raises(RuntimeError, match="depends on the batch size"):
        trace(BatchBranch().eval(), torch.randn(1, 4))
