"""timm's own activation classes: profiled by name, counted exactly, fused where their forward is the kernel's.

nepenthe knows them by module and class name and never imports timm itself (checked in a fresh interpreter).
Linearizing and shrinking timm's models: tests/test_surgery_timm.py.
"""

import subprocess
import sys

import torch
from activation_oracles import assert_gelu_close
from timm.layers import GELU, GELUTanh, QuickGELU  # timm is in requirements.txt
from torch import nn

import nepenthe
from nepenthe.profiler.fused import FusedCountingActivation

torch.set_num_threads(2)


class TimmGELUSubclass(GELU):
    """A user's subclass: tracked as timm's GELU, but its forward may differ, so fused mode leaves it to hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0.0


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(12, 40), GELU(), nn.Linear(40, 24), GELUTanh(), nn.Linear(24, 16), QuickGELU(),
        nn.Linear(16, 20), nn.GELU(), nn.Linear(20, 8), TimmGELUSubclass(), nn.Linear(8, 3),
    )  # fmt: skip


ACTS = ["1", "3", "5", "7", "9"]  # the activations' names in mlp()


def inputs_of(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each activation of ``model`` receives, captured by plain forward pre-hooks (the oracle's input)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0]))
        for name in ACTS
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def sign_counts(x: torch.Tensor) -> torch.Tensor:
    """float64 oracle for threshold 0 along dim 1: (off, on) per channel, NaN in neither."""
    x = x.double()
    return torch.stack([(x <= 0).sum(0), (x > 0).sum(0)], dim=1)


def test_nepenthe_does_not_import_timm():
    code = (
        "import sys, nepenthe; nepenthe.activation_spec(nepenthe.activations.nn.ReLU()); print('timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_timm_activations_are_tracked_with_their_knees_and_counted_exactly():
    model = mlp().eval()
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), nepenthe.profile(model) as prof:
        model(x)
    assert list(prof.layers) == ACTS
    assert all(prof.layers[name].thresholds == (0.0,) for name in ACTS)
    want = inputs_of(model, x)
    for name, counts in prof.counts().items():
        assert torch.equal(counts, sign_counts(want[name])), name
    spec = nepenthe.activation_spec(GELUTanh())
    assert spec.fused_kind == "gelu" and spec.fused_params(GELUTanh()) == {"approximate": "tanh"}
    assert nepenthe.activation_spec(QuickGELU()).fused_kind is None  # x * sigmoid(1.702 x): no kernel


def test_fused_mode_runs_the_kernel_for_timm_gelu_and_gelu_tanh_only():
    model = mlp().eval()
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x)
        with nepenthe.profile(model) as hooks:
            model(x)
        with nepenthe.profile(model, fused=True) as fused:
            swapped = [name for name in ACTS if isinstance(model.get_submodule(name), FusedCountingActivation)]
            got = model(x)
    assert swapped == ["1", "3", "7"]  # timm's GELU and GELUTanh, torch's GELU; not QuickGELU, not a subclass
    assert [type(model.get_submodule(name)).__name__ for name in ACTS] == [
        "GELU", "GELUTanh", "QuickGELU", "GELU", "TimmGELUSubclass",
    ]  # fmt: skip
    assert_gelu_close(got, want)
    # the first activation sees the same input in both modes; later ones may see last-bit differences
    assert torch.equal(fused.counts()["1"], hooks.counts()["1"])
    assert all(int(c.sum()) == 300 * c.shape[0] for c in fused.counts().values())


def test_activations_by_name_take_torch_and_timm_classes_of_that_name():
    model = mlp().eval()
    with torch.no_grad(), nepenthe.profile(model, activations=["gelu"]) as prof:
        model(torch.randn(5, 12))
    assert list(prof.layers) == ["1", "7", "9"]  # timm's GELU, torch's, and the subclass of timm's
