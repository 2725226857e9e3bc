"""Plans: the JSON record of a shrink, which rebuilds the shrunk structure from a fresh model.

A plan lists the linearized call sites (where, how many channels, on which dim, the state each channel stays
in) and the graph edits of ``shrink`` (nodes folded, dropped and merged, and the shape of each new layer).
Applied to a fresh instance of the original architecture it rebuilds a model of the shrunk structure, into
which the shrunk model's plain ``state_dict`` loads.
"""

from __future__ import annotations

import json
import os

import torch
import torch.fx as fx
from torch import nn

from .affine import CallSiteDispatch, ChannelAffine, install_dispatch_reset
from .constants import guard_input_shape
from .rewrite import replay
from .trace import trace

PLAN_FORMAT = "nepenthe-shrink-plan"
PLAN_VERSION = 1


def _site_entry(path: str, call_index: int, calls: int | None, m: ChannelAffine) -> dict:
    return {
        "site": m.site,
        "module": path,
        "call_index": call_index,
        "calls": calls,
        "channels": m.channels,
        "channel_dim": m.channel_dim,
        "exact": m.exact,
        "states": m.states,
    }


def make_plan(model: nn.Module) -> dict:
    """The linearization part of a plan, read from a linearized model (``edits`` are added by ``shrink``)."""
    sites = []
    for path, module in model.named_modules():
        if isinstance(module, CallSiteDispatch):
            for key, site in module.sites.items():
                if isinstance(site, ChannelAffine):
                    sites.append(_site_entry(path, int(key), module.calls, site))
        elif isinstance(module, ChannelAffine) and ".sites." not in f".{path}":
            sites.append(_site_entry(path, 0, 1, module))
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "architecture": type(model).__name__,
        "linearized": sites,
        "edits": [],
    }


def save_plan(plan: dict, path: str | os.PathLike) -> None:
    """Write ``plan`` (``report.plan``) as JSON.

    Usage (a sketch)::

        small, report = nepenthe.shrink(model, x)
        nepenthe.save_plan(report.plan, "plan.json"); torch.save(small.state_dict(), "small.pt")
    """
    with open(path, "w") as f:
        json.dump(plan, f, indent=1)


def load_plan(path: str | os.PathLike) -> dict:
    """Read a plan written by :func:`save_plan` (checks its format)."""
    with open(path) as f:
        plan = json.load(f)
    _check(plan)
    return plan


def _check(plan: object) -> None:
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ValueError(
            f"plan: not a nepenthe shrink plan (format {getattr(plan, 'get', lambda k: None)('format')!r})"
        )
    if plan.get("version") != PLAN_VERSION:
        raise ValueError(f"plan: version {plan.get('version')} is not supported (this nepenthe reads {PLAN_VERSION})")


def apply_plan(model: nn.Module, plan: dict) -> fx.GraphModule:
    """Rebuild the shrunk structure from ``model``, a fresh instance of the architecture the plan was made for.

    The result has the shrunk model's layers with placeholder values: load the shrunk model's ``state_dict``.

    Usage (a sketch)::

        small = nepenthe.apply_plan(torchvision.models.resnet18(), nepenthe.load_plan("plan.json"))
        small.load_state_dict(torch.load("small.pt"))
    """
    _check(plan)
    if plan.get("architecture") not in (None, type(model).__name__):
        raise ValueError(f"plan: made for {plan['architecture']}, got a {type(model).__name__}")
    model.eval()
    for entry in plan["linearized"]:
        scale = torch.ones(entry["channels"]) if entry["channels"] else torch.tensor(1.0)
        affine = ChannelAffine(
            scale, torch.zeros_like(scale), entry["channel_dim"], entry["site"], entry["exact"], entry.get("states")
        )
        path = entry["module"]
        parent_name, _, attr = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            current = getattr(parent, attr)
        except AttributeError:
            raise ValueError(
                f"plan: the model has no module {path!r}; is it the architecture the plan is for?"
            ) from None
        if entry["calls"] == 1:
            setattr(parent, attr, affine)
            continue
        if not isinstance(current, CallSiteDispatch):
            current = CallSiteDispatch(current, entry["calls"])
            setattr(parent, attr, current)
        current.sites[str(entry["call_index"])] = affine
        install_dispatch_reset(model)
    shape = plan.get("input_shape")
    example = None
    if shape:  # a model traced with its shape-dependent branches fixed is traced again with that shape
        weight = next(model.parameters(), None)
        example = torch.zeros(1, *shape, dtype=weight.dtype if weight is not None else torch.float32,
                              device=weight.device if weight is not None else "cpu")  # fmt: skip
    gm = replay(trace(model, example), plan["edits"])
    if plan.get("input_shape"):
        guard_input_shape(gm, tuple(plan["input_shape"]))
    return gm
