"""``shrink``: turn a linearized model into a shallower one that computes the same function (METHOD.md 5)."""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..latency import compare_latency
from .affine import CallSiteDispatch, ChannelAffine
from .constants import CONSTANT_EDITS, guard_input_shape
from .plan import make_plan
from .report import ShrinkReport, count_flops, graph_layer_counts
from .rewrite import Surgeon
from .trace import trace

_TOLERANCE = {torch.float64: 1e-5, torch.float32: 1e-4}


def identity_only(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose linearized call sites are plain identities (what the papers do; nothing merged)."""
    out = copy.deepcopy(model)
    for module in out.modules():
        if isinstance(module, CallSiteDispatch):
            for key, site in list(module.sites.items()):
                if isinstance(site, ChannelAffine):
                    module.sites[key] = nn.Identity()
    for name, module in list(out.named_modules()):
        if isinstance(module, ChannelAffine) and name:
            parent_name, _, attr = name.rpartition(".")
            setattr(out.get_submodule(parent_name) if parent_name else out, attr, nn.Identity())
    return out


def output_difference(
    a: nn.Module, b: nn.Module, example_input: torch.Tensor, dtype: torch.dtype, trials: int = 1
) -> tuple[float, float]:
    """Max absolute and relative difference of ``a`` and ``b`` on random inputs of ``example_input``'s shape."""
    a = copy.deepcopy(a).to(dtype).eval()
    b = copy.deepcopy(b).to(dtype).eval()
    g = torch.Generator().manual_seed(1234)
    worst_abs = worst_rel = 0.0
    with torch.no_grad():
        for _ in range(trials):
            x = torch.randn(example_input.shape, generator=g, dtype=dtype).to(example_input.device)
            ya, yb = a(x), b(x)
            if ya.shape != yb.shape:
                return float("inf"), float("inf")
            diff = float((ya - yb).abs().max())
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / max(float(ya.abs().max()), 1e-30))
    return worst_abs, worst_rel


def _stats(gm: fx.GraphModule, model: nn.Module, x1: torch.Tensor) -> dict[str, int]:
    stats = graph_layer_counts(gm)
    stats["params"] = sum(p.numel() for p in model.parameters())
    stats["flops"] = count_flops(model, x1)
    return stats


def shrink(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    check: bool = True,
    check_dtypes: tuple[torch.dtype, ...] = (torch.float64, torch.float32),
    skip_slower: bool = True,
    latency: bool = True,
    latency_batch: int = 32,
    latency_repeats: int = 10,
    latency_warmup: int = 3,
) -> tuple[fx.GraphModule, ShrinkReport]:
    """A shallower copy of a (linearized) ``model`` that computes the same function, and a report.

    Folds eval-mode BatchNorm and the linearized sites' affine maps into the convs/linears next to them, then
    merges the layers they left adjacent wherever the result is exact: Linear∘Linear, chains of convs (1x1 with
    any conv, depthwise with pointwise, k1 then k2 into k1 + k2 - 1 when the zero padding allows), and residual
    blocks whose branch became one conv (the skip becomes a Dirac kernel). Merges that would raise FLOPs are
    skipped when ``skip_slower`` (the DepthShrinker caveat); merges that would not be exact are refused; both
    are listed in the report with the reason. With ``check`` the result is compared with ``model`` on random
    inputs of ``example_input``'s shape (relative error under 1e-5 in float64 and 1e-4 in float32, for each of
    ``check_dtypes``; float64 convs are slow on CPU, so large models may check float32 only) and a failure
    raises. The returned ``torch.fx.GraphModule`` is for inference (dropout is removed); ``model`` is
    left unchanged. With ``latency`` the report measures batch 1 and ``latency_batch`` on ``example_input``'s
    device: before, identity-only and shrunk.

    Usage (a sketch)::

        model, _ = nepenthe.linearize(model, prof.linearizable(), profile=prof)
        small, report = nepenthe.shrink(model, torch.randn(1, 3, 224, 224))
        print(report)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or not example_input.dtype.is_floating_point:
        raise TypeError("example_input must be a floating-point tensor (one input batch of the model)")
    if example_input.dim() < 2 or example_input.shape[0] < 1:
        raise ValueError(f"example_input must have a batch dim, got shape {tuple(example_input.shape)}")
    if not isinstance(latency_batch, int) or latency_batch < 1:
        raise ValueError(f"latency_batch must be a positive int, got {latency_batch!r}")
    was_training = model.training
    model.eval()
    try:
        work = copy.deepcopy(model)
        gm = trace(work)
        ShapeProp(gm).propagate(example_input)
        x1 = example_input[:1]
        before = _stats(trace(model), model, x1)
        sites = [
            n.target
            for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), ChannelAffine)
        ]
        linearized = [gm.get_submodule(t).site or t for t in sites]
        plan = make_plan(model)
        surgeon = Surgeon(gm, skip_slower=skip_slower)
        surgeon.run()
        plan["edits"] = surgeon.edits
        if any(edit["kind"] in CONSTANT_EDITS for edit in surgeon.edits):
            plan["input_shape"] = list(example_input.shape[1:])
            guard_input_shape(gm, tuple(plan["input_shape"]))
        after = _stats(gm, gm, x1)
        report = ShrinkReport(
            linearized_sites=linearized,
            before=before,
            after=after,
            merges=[d for d in surgeon.decisions if d.done],
            skipped=[d for d in surgeon.decisions if not d.done],
            site_outcomes=surgeon.site_outcomes(),
            device=str(example_input.device),
            plan=plan,
        )
        if check:
            for dtype in check_dtypes:
                if dtype not in _TOLERANCE:
                    raise ValueError(f"check_dtypes: {dtype} is not one of {tuple(_TOLERANCE)}")
                tol = _TOLERANCE[dtype]
                abs_diff, rel_diff = output_difference(model, gm, example_input, dtype)
                report.max_abs_diff[str(dtype).removeprefix("torch.")] = abs_diff
                report.max_rel_diff[str(dtype).removeprefix("torch.")] = rel_diff
                if not rel_diff <= tol:
                    raise RuntimeError(
                        f"shrink produced a model that differs from the input model in {dtype} (relative error "
                        f"{rel_diff:.2e} > {tol:.0e}); this is a bug in nepenthe's surgery, please report it"
                    )
        if latency:
            ident = identity_only(model)
            for batch in sorted({1, latency_batch}):
                x = example_input[:1].expand(batch, *example_input.shape[1:]).contiguous()
                variants = {"before": model, "identity_only": ident, "shrunk": gm}
                for name, t in compare_latency(variants, x, latency_warmup, latency_repeats).items():
                    report.latency_ms.setdefault(name, {})[batch] = t
    finally:
        model.train(was_training)
    return gm, report
