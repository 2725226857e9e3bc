"""shrink's check: the surgery runs in float64, so the float64 check tests its algebra alone; a model that amplifies
float32 rounding gets a warning, not a false bug report; a wrong surgery still raises. A model fx cannot trace is
an error naming the module where the trace failed."""

import importlib

import pytest
import torch
from torch import nn

import nepenthe

shrink_module = importlib.import_module("nepenthe.surgery.shrink")  # the package exports the function by that name


def cancelling_model() -> nn.Sequential:
    """y = (1e8 x0 + x1) - 1e8 x0 = x1 through a linearized ReLU. In float32 the hidden layer loses x1 (an ulp of
    1e8 is 8), so the model's own float32 output is mostly rounding; merged, the two Linears are y = x1 exactly."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e8, 1.0], [1e8, 0.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
        model[2].bias.zero_()
    lin, _ = nepenthe.linearize(model, ["1"], profile={"1": torch.tensor([[0, 5], [0, 5]])})  # ReLU: identity
    return lin


def test_a_model_that_amplifies_float32_rounding_gets_a_warning_and_the_exact_merge():
    model = cancelling_model()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"in float32 the shrunk model differs .* though in float64 it computes"):
        small, report = nepenthe.shrink(model, x, latency=False)
    assert report.max_rel_diff["float64"] < 1e-7 and report.max_rel_diff["float32"] > 1e-2
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (2, 1)
    assert next(small.parameters()).dtype == torch.float32  # rounded back to the model's dtype
    with torch.no_grad():
        torch.testing.assert_close(small(x), x[:, 1:], rtol=1e-6, atol=1e-6)  # the merge is y = x1
    with pytest.raises(RuntimeError, match=r"differs from the input model in float32 .*check float64"):
        nepenthe.shrink(model, x, latency=False, check_dtypes=(torch.float32,))


def test_a_wrong_surgery_still_raises(monkeypatch):
    run = shrink_module.Surgeon.run

    def run_then_spoil(self):
        run(self)
        with torch.no_grad():
            next(self.gm.parameters()).add_(0.5)

    monkeypatch.setattr(shrink_module.Surgeon, "run", run_then_spoil)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    lin, _ = nepenthe.linearize(model, ["1"], profile={"1": torch.tensor([[0, 5]] * 4)})
    with pytest.raises(RuntimeError, match=r"differs from the input model in float64 .* bug in nepenthe's surgery"):
        nepenthe.shrink(lin, torch.randn(4, 3), latency=False)


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x  # data-dependent control flow: fx cannot trace it


def test_an_untraceable_model_is_an_error_naming_the_module_that_failed():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), Branchy()))
    with pytest.raises(RuntimeError, match=r"trace of Sequential, which failed in 1\.1 \(Branchy\): symbolically"):
        nepenthe.shrink(model, torch.randn(2, 3), latency=False)
