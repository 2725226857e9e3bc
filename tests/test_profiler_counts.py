"""The profiler's counts, names and entropies against an independent reference written here.

The reference uses plain forward pre-hooks and plain torch ops (``(x > t)`` summed over the non-channel dims);
the neuron dim comes from what we know of each architecture (conv maps: dim 1; Swin-T's MLP tokens: last dim).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

import nepenthe

torch.set_num_threads(2)

# model name -> (constructor, input size, activation class, expected call sites, neuron dim of >2-D inputs)
MODELS = {
    "resnet18": (torchvision.models.resnet18, 32, nn.ReLU, 17, 1),
    "mobilenet_v2": (torchvision.models.mobilenet_v2, 32, nn.ReLU6, 35, 1),
    "vgg16_bn": (torchvision.models.vgg16_bn, 32, nn.ReLU, 15, 1),
    "swin_t": (torchvision.models.swin_t, 32, nn.GELU, 12, -1),
}


def reference_counts(model: nn.Module, batches: list[torch.Tensor], cls: type, token_dim: int, thresholds):
    """Counts per call site, named NAME or NAME@k, with plain hooks and plain torch ops."""
    counts: dict[tuple[str, int], torch.Tensor] = {}
    calls: dict[str, int] = {}
    per_forward: dict[str, int] = {}
    handles = []

    def make_hook(name):
        def hook(module, args):
            x = args[0].detach().to(torch.float64)
            index = calls.get(name, 0)
            calls[name] = index + 1
            per_forward[name] = max(per_forward.get(name, 0), index + 1)
            dim = 1 if x.dim() <= 2 else token_dim % x.dim()
            other = [d for d in range(x.dim()) if d != dim]
            state = sum((x > t).long() for t in thresholds)
            valid = ~torch.isnan(x)
            got = torch.stack([((state == k) & valid).sum(dim=other) for k in range(len(thresholds) + 1)], dim=1)
            counts[(name, index)] = counts.get((name, index), 0) + got

        return hook

    for name, module in model.named_modules():
        if type(module) is cls:
            handles.append(module.register_forward_pre_hook(make_hook(name)))
    with torch.no_grad():
        for x in batches:
            calls.clear()
            model(x)
    for h in handles:
        h.remove()
    return {(m if per_forward[m] == 1 else f"{m}@{i}"): c for (m, i), c in counts.items()}


def thresholds_of(cls: type) -> tuple[float, ...]:
    return (0.0, 6.0) if cls is nn.ReLU6 else (0.0,)


def entropy_by_hand(counts: torch.Tensor) -> list[float]:
    out = []
    for row in counts.tolist():
        total = sum(row)
        out.append(-sum((n / total) * math.log2(n / total) for n in row if n) + 0.0 if total else 0.0)
    return out


@pytest.fixture(scope="module", params=sorted(MODELS))
def profiled(request):
    """A model of each kind, its batches, our profile (hook and fused) and the reference counts."""
    name = request.param
    ctor, size, cls, n_sites, token_dim = MODELS[name]
    torch.manual_seed(0)
    model = ctor().eval()
    batches = [torch.randn(2, 3, size, size) for _ in range(2)]
    expected = reference_counts(model, batches, cls, token_dim, thresholds_of(cls))
    results = {}
    for fused in (False, True):
        with nepenthe.profile(model, fused=fused) as prof, torch.no_grad():
            for x in batches:
                model(x)
        results[fused] = prof
    return name, model, n_sites, expected, results


def test_layer_names_and_number_of_call_sites(profiled):
    name, _, n_sites, expected, results = profiled
    assert list(results[False].layers) == list(expected)
    assert len(expected) == n_sites
    if name == "resnet18":
        assert "layer1.0.relu@0" in expected and "layer1.0.relu@1" in expected and "relu" in expected


def test_counts_equal_reference_exactly(profiled):
    _, _, _, expected, results = profiled
    counts = results[False].counts()
    for layer, ref in expected.items():
        assert counts[layer].dtype == torch.int64
        assert torch.equal(counts[layer], ref), layer


def test_fused_mode_counts_equal_hook_mode(profiled):
    name, _, _, _, results = profiled
    hooks, fused = results[False].counts(), results[True].counts()
    assert list(hooks) == list(fused)
    for i, layer in enumerate(hooks):
        if MODELS[name][2] is nn.GELU and i > 0:
            # the fused GELU's float32 output may differ from torch's in the last bit, so the inputs of later
            # layers may too: a value within an ulp of 0 may then change state
            assert int((hooks[layer] - fused[layer]).abs().sum()) <= 1e-4 * int(hooks[layer].sum()), layer
        else:
            assert torch.equal(hooks[layer], fused[layer]), layer


def test_entropy_matches_float64_hand_computation(profiled):
    _, _, _, expected, results = profiled
    entropy = results[False].entropy()
    means = results[False].layer_entropy("mean")
    sums = results[False].layer_entropy("sum")
    for layer, ref in expected.items():
        by_hand = entropy_by_hand(ref)
        assert entropy[layer].dtype == torch.float64
        assert entropy[layer].tolist() == pytest.approx(by_hand, abs=1e-12)
        assert means[layer] == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-12)
        assert sums[layer] == pytest.approx(sum(by_hand), abs=1e-9)
    lin = results[False].linearizable()
    assert lin == [k for k, c in expected.items() if bool(((c > 0).sum(dim=1) == 1).all())]


def test_channel_dims_of_layers(profiled):
    _, _, _, expected, results = profiled
    for info in results[False].layers.values():
        assert results[False].counts()[info.name].shape == expected[info.name].shape


def test_summary_lists_every_layer(profiled):
    _, _, _, expected, results = profiled
    text = results[False].summary()
    for layer in expected:
        assert layer in text
    assert f"{len(expected)} layers" in text


def small_cnn(smooth: bool = True) -> nn.Module:
    """ReLU (in place), LeakyReLU, Hardtanh, GELU (tanh) or ReLU, and SiLU (no fused kernel: hooks)."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(8, 8, 1), nn.Hardtanh(-0.5, 0.5),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.GELU(approximate="tanh") if smooth else nn.ReLU(),
        nn.Linear(16, 4), nn.SiLU(),
    )  # fmt: skip


def hook_counts(model: nn.Module, x: torch.Tensor, **kw) -> dict[str, torch.Tensor]:
    with nepenthe.profile(model, **kw) as prof, torch.no_grad():
        model(x)
    return prof.counts()


@pytest.mark.parametrize("smooth", [False, True])
def test_fused_training_outputs_gradients_and_counts_equal_hook_mode(smooth):
    model = small_cnn(smooth).train()
    twin = copy.deepcopy(model)
    x = torch.randn(4, 3, 8, 8)
    with nepenthe.profile(twin) as hook_prof:
        y_ref = twin(x)
        y_ref.square().sum().backward()
    with nepenthe.profile(model, fused=True) as fused_prof:
        assert type(model[2]).__name__ == "FusedCountingActivation"
        y = model(x)
        y.square().sum().backward()
    # relu/hardtanh/leaky_relu kernels are bit-exact; GELU is computed in float32 close to torch's (kernel contract)
    same = torch.equal if not smooth else lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert same(y, y_ref)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert same(p.grad, q.grad)
    # after a fused GELU, the next layer's input may differ in the last bit: compare the layers up to the GELU
    compared = list(hook_prof.counts().items())[: -1 if smooth else None]
    for layer, c in compared:
        assert torch.equal(fused_prof.counts()[layer], c)
    assert isinstance(model[2], nn.ReLU) and model[2].inplace


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_in_place_activations_overwrite_their_input_and_count_as_hooks(channels_last, device, monkeypatch):
    """Under no_grad, inplace=True activations run fused_activation_: the output of the layer before is
    overwritten, as the original modules do, and the counts equal hook mode's."""
    import nepenthe.profiler.fused as profiler_fused

    in_place_calls: list[str] = []
    real = profiler_fused.fused_activation_

    def spy(x, kind, counts, **kw):
        in_place_calls.append(kind)
        return real(x, kind, counts, **kw)

    monkeypatch.setattr(profiler_fused, "fused_activation_", spy)
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU6(inplace=True), nn.Conv2d(16, 8, 1), nn.LeakyReLU(0.2, inplace=True),
    ).eval()  # fmt: skip
    x = torch.randn(8, 3, 14, 14) * 3
    model, x = model.to(device), x.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    plain = hook_counts(model, x)
    with torch.no_grad():
        y_ref = model(x)
    seen: list[torch.Tensor] = []
    handle = model[2].register_forward_hook(lambda m, i, out: seen.append(out))
    with nepenthe.profile(model, fused=True) as prof, torch.no_grad():
        y = model(x)
    handle.remove()
    assert torch.equal(y, y_ref)
    assert torch.equal(seen[0], torch.clamp(seen[0], 0.0, 6.0))  # the conv's output, overwritten by ReLU6
    assert in_place_calls == ["relu", "hardtanh", "leaky_relu"]
    for layer, c in plain.items():
        assert torch.equal(prof.counts()[layer], c), layer


def test_inference_mode_channels_last_and_autocast():
    model = small_cnn().eval()
    x = torch.randn(4, 3, 8, 8)
    plain = hook_counts(model, x)
    with nepenthe.profile(model) as prof:
        with torch.inference_mode():
            model(x)
        with torch.no_grad():
            model(x)  # counts first made under inference_mode must still be updatable outside it
    assert all(torch.equal(prof.counts()[k], 2 * v) for k, v in plain.items())
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    got = hook_counts(cl, x.to(memory_format=torch.channels_last))
    assert all(torch.equal(got[k], v) for k, v in plain.items())
    # under autocast the hook sees the bf16 input the activation sees: compare with counting that input
    seen = {}
    handle = model[3].register_forward_hook(lambda m, a, out: seen.setdefault("conv", out.detach()))
    with nepenthe.profile(model) as prof, torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        model(x)
    handle.remove()
    assert seen["conv"].dtype == torch.bfloat16
    assert torch.equal(prof.counts()["4"], nepenthe.count_states(seen["conv"], (0.0,), backend="torch"))


def test_ignore_ties_leaves_values_at_a_knee_out():
    model = nn.Sequential(nn.ReLU6())
    x = torch.tensor([[0.0, 6.0, 3.0], [-1.0, 6.0, 7.0]])
    with_ties = hook_counts(model, x)["0"]
    without = hook_counts(model, x, ignore_ties=True)["0"]
    assert with_ties.tolist() == [[2, 0, 0], [0, 2, 0], [0, 1, 1]]
    assert without.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]


def test_fused_mode_under_bf16_autocast_counts_like_hook_mode():
    model = small_cnn(smooth=True).eval()
    x = torch.randn(4, 3, 8, 8)
    with nepenthe.profile(model) as hooks, torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        model(x)
    with nepenthe.profile(model, fused=True) as fused, torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        model(x)
    assert list(fused.counts()) == list(hooks.counts())
    # the last layer's input comes after the fused GELU, whose bf16 output may round differently from torch's
    for layer, c in list(hooks.counts().items())[:-1]:
        assert torch.equal(fused.counts()[layer], c), layer
