"""linearize + shrink on torchvision models: exact outputs, hand-derived layer counts, plan round trips."""

import copy
import io

import pytest
import torch
import torchvision
from model_helpers import random_bn
from torch import nn

import nepenthe
from nepenthe.profiler.callsites import trace_call_sites

torch.set_num_threads(2)


def synthetic_counts(model: nn.Module, x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Counts where each neuron sits in one random state (so some channels are off, some on, some clamped)."""
    g = torch.Generator().manual_seed(seed)
    with nepenthe.profile(model) as prof:
        model(x)
    out = {}
    for name, c in prof.counts().items():
        channels, states = c.shape
        pick = torch.randint(0, states, (channels,), generator=g)
        counts = torch.zeros(channels, states, dtype=torch.int64)
        counts[torch.arange(channels), pick] = 11
        out[name] = counts
    return out


def max_rel_diff(a: nn.Module, b: nn.Module, shape: tuple, dtype=torch.float64) -> float:
    a, b = copy.deepcopy(a).to(dtype), copy.deepcopy(b).to(dtype)
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max() / ya.abs().max())


def run(model_fn, x, select, dtype=torch.float64, **shrink_kwargs):
    """Linearize the chosen sites with synthetic states, shrink and compare with the linearized model.

    float64 shows exactness best; MobileNet runs in float32 because CPU depthwise convs in float64 are ~50x slower.
    """
    model = random_bn(model_fn())
    names = [s.name for s in trace_call_sites(model, x)]
    chosen = select(names)
    counts = synthetic_counts(model, x)
    lin, lin_report = nepenthe.linearize(model, chosen, profile=counts)
    lin, x = lin.to(dtype), x.to(dtype)
    small, report = nepenthe.shrink(lin, x, latency=False, check=False, **shrink_kwargs)
    assert max_rel_diff(lin, small, tuple(x.shape), dtype) < TOLERANCE[dtype]
    return model_fn, names, chosen, lin, lin_report, small, report


TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def check_plan_round_trip(model_fn, small, report, x):
    buf = io.StringIO()
    import json

    json.dump(report.plan, buf)
    plan = json.loads(buf.getvalue())
    dtype = next(small.parameters()).dtype
    rebuilt = nepenthe.apply_plan(model_fn(), plan).to(dtype)
    rebuilt.load_state_dict(small.state_dict())
    x = x.to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), small(x), rtol=0, atol=0)


def vgg16_bn_small():
    # torchvision's vgg16_bn features; the classifier keeps its Linear-ReLU-Dropout x2 - Linear structure but is
    # narrowed (7x7x512 -> 4096 would dominate the test time without testing anything more)
    m = torchvision.models.vgg16_bn(num_classes=10)
    m.avgpool = nn.AdaptiveAvgPool2d(1)
    m.classifier = nn.Sequential(
        nn.Linear(512, 64),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(64, 64),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(64, 10),
    )
    return m


def resnet18():
    return torchvision.models.resnet18(num_classes=10)


def mobilenet_v2():
    return torchvision.models.mobilenet_v2(num_classes=10)


def swin_t():
    return torchvision.models.swin_t(num_classes=10)


X32 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_resnet18_all_layers():
    model_fn, names, chosen, lin, _, small, report = run(resnet18, X32, lambda n: n)
    assert len(names) == 17
    # 20 convs + fc; no conv pair merges exactly ("same"-padded 3x3 pairs), so the layer count stays
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (21, 21)
    assert report.after["activations"] == 0
    # 9 sites after a conv+BN fold into it; 3 after an add that feeds a downsampling block fold into its conv1 and
    # downsample conv; 5 stay as affine maps (4 feed a conv and the next skip add, the last feeds avgpool)
    assert report.after["affine_maps"] == 5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    assert any("padding" in d.reason for d in report.skipped)
    check_plan_round_trip(model_fn, small, report, X32)


def test_resnet18_shared_relu_one_call_site():
    model_fn, _, chosen, lin, _, small, report = run(resnet18, X32, lambda n: ["layer1.0.relu@0", "layer3.1.relu@1"])
    assert report.after["activations"] == 15
    assert isinstance(lin.layer1[0].relu, nepenthe.surgery.CallSiteDispatch)
    check_plan_round_trip(model_fn, small, report, X32)
    buf = io.BytesIO()
    torch.save(lin, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X32.double()), lin(X32.double()), rtol=0, atol=0)


def test_mobilenet_v2_all_layers_merges_inverted_residuals():
    model_fn, names, _, lin, _, small, report = run(mobilenet_v2, X32, lambda n: n, torch.float32)
    assert len(names) == 35
    # stem conv, block 1 (dw, pw: merging raises FLOPs), 16 blocks pw->dw->pw into one dense 3x3, 1x1 head, fc
    assert report.before["conv_linear"] == 53
    assert report.after["conv_linear"] == 1 + 2 + 16 + 1 + 1
    assert report.after["depth"] == 21
    residual = [d for d in report.merges if d.what.startswith("merge residual")]
    assert len(residual) == 10  # the stride-1 blocks with in == out channels: skip as a Dirac kernel
    assert report.after["activations"] == 0 and report.after["affine_maps"] == 0
    assert report.after["flops"] < report.before["flops"]
    assert any("raises FLOPs" in d.reason for d in report.skipped)
    check_plan_round_trip(model_fn, small, report, X32)


def test_mobilenet_v2_adjacent_pair_and_export():
    pair = ["features.4.conv.0.2", "features.4.conv.1.2"]
    model_fn, _, _, lin, _, small, report = run(mobilenet_v2, X32, lambda n: pair, torch.float32)
    assert report.after["conv_linear"] == 53 - 2
    assert report.after["activations"] == 35 - 2
    exported = torch.export.export(small, (X32,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(X32), small(X32))


@pytest.mark.slow
def test_mobilenet_v2_every_other_layer_keeps_slower_merges_apart():
    model_fn, _, chosen, lin, _, small, report = run(mobilenet_v2, X32, lambda n: n[::2], torch.float32)
    assert len(chosen) == 18
    assert report.after["activations"] == 17
    # every other site is a block's pw ReLU6: pw (1x1) + dw merges into a dense 3x3, which raises FLOPs
    assert report.after["conv_linear"] == 53
    forced, _ = nepenthe.shrink(lin, X32, latency=False, check=False, skip_slower=False)
    assert max_rel_diff(lin, forced, tuple(X32.shape), torch.float32) < 1e-5
    assert len([m for m in forced.modules() if isinstance(m, nn.Conv2d)]) < 53


def test_vgg16_bn_every_other_layer():
    model_fn, names, chosen, lin, _, small, report = run(vgg16_bn_small, X32, lambda n: n[::2])
    assert len(names) == 15 and len(chosen) == 8
    # 13 convs (3x3 pairs do not merge) + 3 linears; the linearized classifier ReLU merges fc2 and fc3
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (16, 15)
    assert report.after["activations"] == 7 and report.after["affine_maps"] == 0
    check_plan_round_trip(model_fn, small, report, X32)


def test_swin_t_all_gelu_mlps_merge():
    model_fn, names, chosen, lin, lin_report, small, report = run(swin_t, X32, lambda n: n)
    assert len(names) == 12
    assert set(lin_report.approximate) == set(names)  # GELU: sign-constant approximation, reported
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (29, 17)
    assert len([d for d in report.merges if "one Linear" in d.what]) == 12
    check_plan_round_trip(model_fn, small, report, X32)


def test_shrink_check_and_report_dict():
    model = random_bn(resnet18())
    lin, _ = nepenthe.linearize(model, ["relu", "layer2.0.relu@0"])
    small, report = nepenthe.shrink(lin, X32, latency=True, latency_batch=2, latency_repeats=1, latency_warmup=0)
    assert report.max_rel_diff["float64"] < 1e-5 and report.max_rel_diff["float32"] < 1e-4
    d = report.to_dict()
    assert set(d["latency_ms"]) == {"before", "identity_only", "shrunk"} and set(d["latency_ms"]["shrunk"]) == {
        "1",
        "2",
    }
    assert "conv/linear layers" in str(report)
    import json

    json.dumps(d)
