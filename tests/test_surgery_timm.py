"""linearize + shrink on timm's models: its GELU class; its BatchNormAct2d (BatchNorm2d, then drop, then act in one
module, the norm of its MobileNets and EfficientNets) traced as a plain BatchNorm that folds, then its children; its
Conv2dSame (the tf_* models' strided convs, padded by amounts that depend on the input's size) traced as a padding
node and a plain conv. And a zoo of 22 timm models (about 25 s): counts, fused mode, linearize and shrink.
"""

import copy
import warnings

import pytest
import timm  # in requirements.txt
import torch
from model_helpers import random_bn
from timm.layers import BatchNormAct2d, Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from torch import nn

import nepenthe
from nepenthe.orchestrator.models import timm_model
from nepenthe.surgery.outputs import compare_outputs
from nepenthe.surgery.split import parts_of
from nepenthe.surgery.trace import trace

torch.set_num_threads(2)


def in_state(prof: nepenthe.Profile, names: list[str], state: int) -> dict[str, torch.Tensor]:
    """Counts where every neuron of each named layer sat only in ``state``."""
    out = {}
    for name in names:
        counts = torch.zeros_like(prof.counts()[name])
        counts[:, state] = 5
        out[name] = counts
    return out


def last_block_linearized(name: str, seed: int) -> tuple[nepenthe.Profile, nn.Module, torch.Tensor]:
    """timm's ``name`` with random BatchNorm statistics, profiled on 2 images of 32x32; its last block's two
    activations (``blocks.6.0.bn1.act``, ``bn2.act``) linearized in their linear piece; in float64 with its input,
    so that shrink folds exactly and checks can be tight."""
    torch.manual_seed(0)
    model = random_bn(timm.create_model(name, pretrained=False, num_classes=10))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(), nepenthe.profile(model) as prof:
        model(x)
    chosen = ["blocks.6.0.bn1.act", "blocks.6.0.bn2.act"]
    lin, _ = nepenthe.linearize(model, chosen, profile=in_state(prof, chosen, 1))
    return prof, lin.double(), x.double()


def test_mobilenet_v2_from_timm_folds_its_batch_norm_acts_and_merges_a_linearized_block():
    """timm's MobileNetV2, its last inverted residual's two ReLU6 held in their linear piece: every BatchNormAct2d's
    norm folds into the conv before it, and conv_pw, conv_dw and conv_pwl merge into one 3x3 conv (53 -> 51
    conv layers). The shrunk model computes the linearized one's function, its plan rebuilds it from a fresh model,
    and the user's model is left as it was."""
    prof, lin, x = last_block_linearized("mobilenetv2_100", seed=4)
    assert len(prof.layers) == 35
    kept = copy.deepcopy(lin.state_dict())
    small, report = nepenthe.shrink(lin, x, latency=False, check_dtypes=(torch.float64,))
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (53, 51)
    assert (report.before["activations"], report.after["activations"]) == (33, 33)
    assert "merge blocks.6.0.conv_pw + blocks.6.0.conv_dw + blocks.6.0.conv_pwl -> 3x3 conv (groups=1)" in [
        d.what for d in report.merges
    ]
    folded = {d.what.split()[1] for d in report.merges if d.what.startswith("fold ")}
    norms = {f"{name}.batch_norm" for name, m in lin.named_modules() if isinstance(m, BatchNormAct2d)}
    assert len(norms) == 52 and norms <= folded
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in small.modules())
    assert lin.state_dict().keys() == kept.keys() and all(torch.equal(v, kept[k]) for k, v in lin.state_dict().items())
    rebuilt = nepenthe.apply_plan(timm.create_model("mobilenetv2_100", num_classes=10), report.plan).double()
    rebuilt.load_state_dict(small.state_dict())  # the plan rebuilds the shrunk structure from a fresh model
    with torch.no_grad():
        torch.testing.assert_close(small(x), lin(x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(rebuilt(x), small(x), rtol=0, atol=0)


def test_split_modules_trace_as_their_parts_in_training_mode_too():
    """The traced graph of a Conv2dSame and a BatchNormAct2d computes what the modules do: "SAME" padding for each
    input size (odd and even), batch statistics and running-stat updates (the plain modules share their tensors).
    A subclass is not split."""
    torch.manual_seed(1)
    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), BatchNormAct2d(8, act_layer=nn.ReLU6)).train()
    twin = copy.deepcopy(model)
    gm = trace(twin)
    calls = [(n.op, n.target if isinstance(n.target, str) else n.target.__name__) for n in gm.graph.nodes]
    assert calls[1:-1] == [
        ("call_function", "pad_same"), ("call_module", "0.conv"), ("call_module", "1.batch_norm"),
        ("call_module", "1.drop"), ("call_module", "1.act"),
    ]  # fmt: skip
    for h, w in ((9, 10), (10, 9), (12, 12)):
        x = torch.randn(4, 3, h, w)
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(twin[1].running_mean, model[1].running_mean, rtol=0, atol=0)
    assert int(twin[1].num_batches_tracked) == 3 and gm.training

    class Shifted(BatchNormAct2d):
        def forward(self, x):
            return super().forward(x) + 1

    assert parts_of(Shifted(8)) is None and parts_of(nn.BatchNorm2d(8)) is None and parts_of(nn.Conv2d(1, 1, 1)) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: StdConv2d(3, 8, 3, padding=1, bias=True),
        lambda: StdConv2dSame(3, 8, 3, stride=1),  # "SAME" padding fixed when built
        lambda: StdConv2dSame(3, 8, 3, stride=2),  # "SAME" padding at run time
        lambda: ScaledStdConv2d(3, 8, 3, groups=1),
        lambda: ScaledStdConv2dSame(4, 8, 3, stride=2, groups=2),
    ],
    ids=["std", "std-same-static", "std-same-dynamic", "scaled", "scaled-same-dynamic-groups"],
)
def test_weight_standardized_convs_trace_as_plain_convs_of_their_standardized_weights(make):
    """timm's weight-standardized convs standardize their weight in every forward. Traced, each is a plain conv
    whose weight is that standardized weight, computed here by hand in float64: each output channel's weights less
    their mean, over the square root of their (biased) variance plus eps, times gain * scale for the scaled form.
    The graph computes what the module does, on odd and even sizes; the module's own weight is left as it was."""
    torch.manual_seed(3)
    module = make().double()
    scaled = isinstance(module, (ScaledStdConv2d, ScaledStdConv2dSame))  # the "SAME" form is not a subclass
    if scaled:
        module.gain.data.uniform_(0.5, 1.5)
    kept = module.weight.detach().clone()
    gm = trace(nn.Sequential(module))
    conv = gm.get_submodule("0.conv")
    assert type(conv) is nn.Conv2d and conv.bias is module.bias
    w = kept.flatten(1)
    want = (w - w.mean(1, keepdim=True)) / torch.sqrt(w.var(1, unbiased=False, keepdim=True) + module.eps)
    if scaled:
        want = want * (module.gain.detach() * module.scale).view(-1, 1)
    torch.testing.assert_close(conv.weight.detach(), want.view_as(kept), rtol=1e-12, atol=1e-12)
    assert torch.equal(module.weight, kept)
    for h, wd in ((9, 10), (12, 12)):
        x = torch.randn(2, module.in_channels, h, wd, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), module(x), rtol=1e-10, atol=1e-10)


def test_weight_standardized_convs_merge_once_linearized():
    """A 1x1 StdConv2d, a ReLU held in its linear piece, a 3x3 ScaledStdConv2d: the two merge into one 3x3 conv (as
    plain convs; traced as they are, they would be function calls that nothing merges), and the result computes the
    linearized model's function."""
    torch.manual_seed(0)
    model = nn.Sequential(
        StdConv2d(3, 16, 1, bias=True), nn.ReLU(), ScaledStdConv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    ).double().eval()  # fmt: skip
    model[2].gain.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    lin, _ = nepenthe.linearize(model, ["1"], profile={"1": torch.tensor([[0, 5]] * 16)})
    small, report = nepenthe.shrink(lin, x, latency=False, check_dtypes=(torch.float64,))
    assert [d.what for d in report.merges] == [
        "drop identity map 1 (site 1)",
        "merge 0.conv + 2.conv -> 3x3 conv (groups=1)",
    ]
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (3, 2)
    y = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(small(y), lin(y), rtol=1e-10, atol=1e-10)


def test_an_nfnet_shrinks_with_plain_convs_in_place_of_its_weight_standardized_ones():
    """timm's NF-ResNet-26 has no norm, and every conv is a ScaledStdConv2d: before the split, shrink saw 1 conv or
    linear layer in it (the head), now 30, and the shrunk model holds no weight-standardized conv. Its conv gains
    made non-zero (each branch's last one is 0 when built, a dead branch), with its last block linearized, the
    shrunk model computes the linearized one's function."""
    torch.manual_seed(0)
    model = timm.create_model("nf_resnet26", pretrained=False, num_classes=10).eval()
    for name, p in model.named_parameters():
        if name.endswith("gain"):
            p.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad(), nepenthe.profile(model) as prof:
        model(x)
    chosen = ["stages.3.1.act2", "stages.3.1.act3"]
    lin, _ = nepenthe.linearize(model, chosen, profile=in_state(prof, chosen, 1))
    lin, x = lin.double(), x.double()
    small, report = nepenthe.shrink(lin, x, latency=False, check_dtypes=(torch.float64,))
    assert report.before["conv_linear"] == 30
    assert not any(isinstance(m, (ScaledStdConv2d, StdConv2d)) for m in small.modules())
    assert sum(type(m) is nn.Conv2d for m in small.modules()) == 29
    with torch.no_grad():
        torch.testing.assert_close(small(x), lin(x), rtol=1e-10, atol=1e-10)


def test_tf_efficientnet_lite0_folds_into_its_same_padded_convs_and_runs_on_other_sizes():
    """timm's tf_efficientnet_lite0: 5 strided convs pad "SAME" at run time (Conv2dSame). Each one's BatchNorm folds
    into its plain conv; the last block, linearized, merges (50 -> 48 conv layers). The shrunk model pads each input
    size as the model does: the same function on 32x32 and on 33x31 images."""
    _, lin, x = last_block_linearized("tf_efficientnet_lite0", seed=5)
    small, report = nepenthe.shrink(lin, x, latency=False, check_dtypes=(torch.float64,))
    same = [name for name, m in lin.named_modules() if isinstance(m, Conv2dSame)]
    assert same == ["conv_stem"] + [f"blocks.{b}.0.conv_dw" for b in (1, 2, 3, 5)]
    done = [d.what for d in report.merges]
    assert "fold bn1.batch_norm into conv_stem.conv" in done
    assert all(f"fold blocks.{b}.0.bn2.batch_norm into blocks.{b}.0.conv_dw.conv" in done for b in (1, 2, 3, 5))
    assert "merge blocks.6.0.conv_pw + blocks.6.0.conv_dw + blocks.6.0.conv_pwl -> 3x3 conv (groups=1)" in done
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (50, 48)
    for size in ((32, 32), (33, 31)):
        y = torch.randn(1, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            torch.testing.assert_close(small(y), lin(y), rtol=1e-10, atol=1e-10)


def test_convnext_from_timm_loses_two_layers_per_linearized_mlp():
    """timm's ConvNeXt (timm's GELU in each block's MLP): the two last MLPs' GELUs, held in their positive state,
    let fc1 and fc2 merge; 12 GELUs -> 10, 41 conv/linear layers -> 39, the same function."""
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), nepenthe.profile(model) as prof:
        model(x)
    names = list(prof.layers)
    assert len(names) == 12 and names[-1] == "stages.3.blocks.1.mlp.act"
    chosen = names[-2:]
    on = {name: torch.tensor([[0, 5]]).repeat(prof.counts()[name].shape[0], 1) for name in chosen}
    lin, _ = nepenthe.linearize(model, chosen, profile=on)
    small, report = nepenthe.shrink(lin, x, latency=False, check_dtypes=(torch.float64,))
    assert report.before["activations"] == 10 and report.after["activations"] == 10
    assert (report.before["conv_linear"], report.after["conv_linear"]) == (41, 39)
    assert report.site_outcomes == {name: "removed (identity map)" for name in chosen}  # GELU's positive piece
    merged = sorted(d.what for d in report.merges if d.what.startswith("merge"))
    assert merged == [
        f"merge stages.3.blocks.{b}.mlp.fc1 + stages.3.blocks.{b}.mlp.fc2 -> 1x1 conv (groups=1)" for b in (0, 1)
    ]
    lin64, small64, x64 = lin.double(), small.double(), x.double()
    with torch.no_grad():
        assert torch.allclose(small64(x64), lin64(x64), rtol=1e-10, atol=1e-12)


ZOO = [
    "resnet18", "resnet50", "resnetv2_50", "mobilenetv2_100", "mobilenetv3_small_100", "efficientnet_b0",
    "tf_efficientnet_lite0", "mixnet_s", "regnetx_002", "regnety_002", "densenet121", "ghostnet_100", "repvgg_a0",
    "dla34", "rexnet_100", "convnext_atto", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "mobilevit_xxs",
    "tiny_vit_5m_224", "efficientvit_b0", "convit_tiny",
]  # fmt: skip


@pytest.mark.parametrize("name", ZOO)
def test_timm_model_zoo(name, monkeypatch):
    """Each model at 64x64: hook counts equal the torch reference backend's; fused mode gives the model's output
    (GELU: within rounding) and the first call site's counts; the last two call sites, linearized in their
    identity-like piece, shrink to a model that passes shrink's own float64 and float32 checks."""
    model = random_bn(timm_model(name, 10, 3, 64))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), nepenthe.profile(model) as prof:
        want = model(x)
    monkeypatch.setenv("NEPENTHE_BACKEND", "torch")
    with torch.no_grad(), nepenthe.profile(model) as ref:
        model(x)
    monkeypatch.delenv("NEPENTHE_BACKEND")
    counts, ref_counts = prof.counts(), ref.counts()
    assert counts.keys() == ref_counts.keys() and all(torch.equal(counts[k], ref_counts[k]) for k in counts)
    with torch.no_grad(), nepenthe.profile(model, fused=True) as fused:
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    first = next(iter(counts))
    assert torch.equal(fused.counts()[first], counts[first])
    chosen = list(prof.layers)[-2:]
    lin, _ = nepenthe.linearize(model, chosen, profile=in_state(prof, chosen, 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="shrink: in float32")  # random weights may amplify rounding
        _, report = nepenthe.shrink(lin, x[:1], latency=False)
    assert report.after["conv_linear"] <= report.before["conv_linear"]
    assert report.max_rel_diff["float64"] < 1e-5
    if name in TRACED_WITH_SHAPES:  # traced for 3x64x64 only
        assert report.plan["input_shape"] == [3, 64, 64]


# Their attention pads or partitions by shape; ConViT builds its relative positions on the first forward.
TRACED_WITH_SHAPES = {"mobilevit_xxs", "tiny_vit_5m_224", "efficientvit_b0", "convit_tiny"}


def test_a_feature_extractor_with_several_outputs_shrinks_and_is_checked_on_each():
    """timm's ResNet-18 as a feature extractor returns three maps: shrink's check compares each (relative to its
    own scale), and a wrong structure is an infinite difference."""
    model = random_bn(timm.create_model("resnet18", features_only=True, out_indices=(2, 3, 4)))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad(), nepenthe.profile(model) as prof:
        maps = model(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(128, 8, 8), (256, 4, 4), (512, 2, 2)]
    lin, _ = nepenthe.linearize(model, ["layer4.1.act1"], profile=in_state(prof, ["layer4.1.act1"], 1))
    small, report = nepenthe.shrink(lin.double(), x.double(), latency=False)
    assert report.max_rel_diff["float64"] < 1e-10
    assert report.site_outcomes == {"layer4.1.act1": "removed (identity map)"}
    with torch.no_grad():
        got, want = small(x.double()), lin(x.double())
    assert isinstance(got, list) and len(got) == 3
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    assert compare_outputs(want, want[:2]) == (float("inf"), float("inf"))
