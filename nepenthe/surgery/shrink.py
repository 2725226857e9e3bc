"""``shrink``: turn a linearized model into a shallower one that computes the same function (METHOD.md 5)."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..latency import compare_latency
from .affine import CallSiteDispatch, ChannelAffine
from .constants import CONSTANT_EDITS, guard_input_shape
from .outputs import compare_outputs
from .plan import make_plan
from .report import ShrinkReport, count_flops, graph_layer_counts
from .rewrite import Surgeon
from .trace import SPECIALIZED, trace

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
    """Max absolute and relative difference of ``a`` and ``b`` on random inputs of ``example_input``'s shape
    (:func:`compare_outputs`)."""
    a = copy.deepcopy(a).to(dtype).eval()
    b = copy.deepcopy(b).to(dtype).eval()
    g = torch.Generator().manual_seed(1234)
    worst_abs = worst_rel = 0.0
    with torch.no_grad():
        for _ in range(trials):
            x = torch.randn(example_input.shape, generator=g, dtype=dtype).to(example_input.device)
            diff, rel = compare_outputs(a(x), b(x))
            worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, rel)
    return worst_abs, worst_rel


def own_rounding(model: nn.Module, example_input: torch.Tensor, dtype: torch.dtype) -> float:
    """How far ``model`` run in ``dtype`` is from ``model`` run in float64, relative to the largest output, on the
    first input :func:`output_difference` draws: the rounding the model itself amplifies (random weights and
    untrained BatchNorm can make a float32 model's outputs differ from its float64 ones by percents)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(example_input.shape, generator=g, dtype=dtype).to(example_input.device)
    with torch.no_grad():
        truth = copy.deepcopy(model).to(torch.float64).eval()(x.to(torch.float64))
        rounded = copy.deepcopy(model).to(dtype).eval()(x)
    return compare_outputs(truth, rounded)[1]


def single_float_dtype(model: nn.Module) -> torch.dtype | None:
    """The one floating dtype of ``model``'s parameters and buffers, or None (none, or several)."""
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _check(model: nn.Module, gm: nn.Module, example_input: torch.Tensor, dtypes: tuple, report: ShrinkReport) -> None:
    """Compare ``gm`` with ``model`` in each of ``dtypes``; raise where the surgery is wrong.

    float64 checks the surgery's algebra (``gm`` is the float64 surgery's result where the model is in another
    precision). A difference in a lower precision alone, beyond its tolerance, once float64 has passed, is the model
    amplifying rounding: a warning that says how much the model itself does.
    """
    failed: dict[torch.dtype, float] = {}
    for dtype in dtypes:
        if dtype not in _TOLERANCE:
            raise ValueError(f"check_dtypes: {dtype} is not one of {tuple(_TOLERANCE)}")
        abs_diff, rel_diff = output_difference(model, gm, example_input, dtype)
        report.max_abs_diff[str(dtype).removeprefix("torch.")] = abs_diff
        report.max_rel_diff[str(dtype).removeprefix("torch.")] = rel_diff
        if not rel_diff <= _TOLERANCE[dtype]:
            failed[dtype] = rel_diff
    exact = torch.float64 in dtypes and torch.float64 not in failed
    for dtype, rel_diff in failed.items():
        name, tol = str(dtype).removeprefix("torch."), _TOLERANCE[dtype]
        if not exact:
            hint = "" if torch.float64 in dtypes else " (a model that amplifies rounding can do that: check float64)"
            raise RuntimeError(
                f"shrink produced a model that differs from the input model in {name} (relative error "
                f"{rel_diff:.2e} > {tol:.0e}){hint}; this is a bug in nepenthe's surgery, please report it"
            )
        warnings.warn(
            f"shrink: in {name} the shrunk model differs from the input model by {rel_diff:.2e} (relative), more "
            f"than {tol:.0e}, though in float64 it computes the same function (to "
            f"{report.max_rel_diff['float64']:.1e}). The input model amplifies rounding: in {name}, on the same "
            f"input, it is {own_rounding(model, example_input, dtype):.2e} from its own float64 output (random "
            "weights or untrained BatchNorm can do that).",
            stacklevel=3,
        )


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

    Folds eval-mode BatchNorm and the linearized sites' affine maps into the convs/linears next to them, then merges
    the layers they left adjacent wherever the result is exact: Linear∘Linear, chains of convs (1x1 with any conv,
    depthwise with pointwise, k1 then k2 into k1 + k2 - 1 when the zero padding allows), and residual blocks whose
    branch became one conv (the skip becomes a Dirac kernel). Merges that would raise FLOPs are skipped when
    ``skip_slower`` (the DepthShrinker caveat); merges that would not be exact are refused; both are listed in the
    report with the reason. The surgery works on a float64 copy of ``model`` and rounds its result to ``model``'s
    dtype once. Where torch.fx cannot trace control flow on shapes (windowed attention that pads), the trace runs
    ``example_input`` alongside: the result takes that shape's branches and refuses inputs of another shape (as it
    does when it folded constants computed for the shape; ``report.plan["input_shape"]``). With ``check`` the result
    is compared with ``model`` on random inputs of ``example_input``'s shape (relative error under 1e-5 in float64
    and 1e-4 in float32, for each of ``check_dtypes``; float64 convs are slow on CPU, so large models may check
    float32 only): a failure in float64 raises (the surgery is wrong); one in float32 alone, where float64 passed,
    is a warning that says how much the model itself amplifies float32 rounding (random weights or untrained
    BatchNorm can). The returned ``torch.fx.GraphModule`` is for inference (dropout is removed); ``model`` is left
    unchanged. With ``latency`` the report measures batch 1 and ``latency_batch`` on ``example_input``'s device:
    before, identity-only and shrunk.

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
        # The surgery runs on a float64 copy (where the model has one other floating dtype), so that the float64
        # check tests its algebra alone; its result is rounded to the model's dtype once, at the end.
        own_dtype = single_float_dtype(model)
        own_dtype = None if own_dtype == torch.float64 else own_dtype
        work = copy.deepcopy(model)
        x = example_input
        if own_dtype is not None:
            work, x = work.to(torch.float64), example_input.to(torch.float64)
        gm = trace(work, x)
        ShapeProp(gm).propagate(x)
        before = _stats(gm, model, example_input[:1])  # gm before the surgery: the traced copy of model
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
        constants = any(edit["kind"] in CONSTANT_EDITS for edit in surgeon.edits)
        if constants or SPECIALIZED in gm.meta:  # the result holds for this input shape only
            plan["input_shape"] = list(example_input.shape[1:])
            guard_input_shape(gm, tuple(plan["input_shape"]))
        after = _stats(gm, gm, x[:1])
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
            _check(model, gm, example_input, check_dtypes, report)
        if own_dtype is not None:
            gm.to(own_dtype)  # the float64 surgery's weights, rounded once
        if latency:
            ident = identity_only(model)
            for batch in sorted({1, latency_batch}):
                xb = example_input[:1].expand(batch, *example_input.shape[1:]).contiguous()
                variants = {"before": model, "identity_only": ident, "shrunk": gm}
                for name, t in compare_latency(variants, xb, latency_warmup, latency_repeats).items():
                    report.latency_ms.setdefault(name, {})[batch] = t
    finally:
        model.train(was_training)
    return gm, report
