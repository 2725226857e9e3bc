"""torch.fx tracing that understands nepenthe's modules (one graph node per activation call site)."""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..activations import ActivationTracer
from ..profiler.callsites import call_site_names
from .affine import CallSiteDispatch, ChannelAffine
from .algebra import BorderBiasConv2d
from .concrete import ConcreteValues
from .outputs import compare_outputs
from .split import parts_of


class SurgeryTracer(ActivationTracer):
    """An fx tracer whose leaves include :class:`ChannelAffine`, :class:`BorderBiasConv2d` and every activation
    nepenthe knows (timm's GELU too, whose forward would otherwise be traced into a bare ``F.gelu``).

    A :class:`CallSiteDispatch` is not kept as a node: call ``k`` is traced as a call of the module for call site
    ``k`` (``relu.sites.1`` or ``relu.original``), so every call site is its own node and can be folded alone. The
    node's ``meta["call_of"]`` keeps the dispatch's name and ``k``, from which :func:`trace` names the call site
    (``relu@1``) in ``meta["call_site"]``, as it names the calls of any other module called more than once; reports
    show that name instead of the target.

    Some modules of other libraries (timm's ``BatchNormAct2d`` and ``Conv2dSame``, :mod:`.split`) are traced as
    their parts: plain torch modules that share their tensors (``NAME.batch_norm``, ``NAME.conv``, kept in
    ``parts``), their own children, and functions.
    """

    def __init__(self) -> None:
        super().__init__()
        self._dispatch_calls: dict[int, int] = {}
        self.parts: dict[str, nn.Module] = {}  # modules made by the trace, by target
        self.failed_in: str | None = None  # where a failed trace failed: "stages.3.1 (MobileVitBlock)"

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (ChannelAffine, BorderBiasConv2d)):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return self._call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module whose trace failed
                self.failed_in = f"{self.path_of_module(m) or 'the model'} ({type(m).__name__})"
            raise

    def _call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        if isinstance(m, CallSiteDispatch):
            index = self._dispatch_calls.get(id(m), 0)
            self._dispatch_calls[id(m)] = index + 1
            if m.calls:
                index %= m.calls
            site = m.site_module(index)
            out = self.call_module(site, site.forward, args, kwargs)
            if isinstance(out, fx.Proxy):
                out.node.meta["call_of"] = (self.path_of_module(m), index)
            return out
        parts = parts_of(m)
        if parts is not None:
            (out,) = args
            for part in parts:
                if part.name is not None:  # a module made by the split
                    target = f"{self.path_of_module(m)}.{part.name}"
                    self.parts[target] = part.call
                    out = self.create_proxy("call_module", target, (out,), {})
                elif isinstance(part.call, nn.Module):  # a child of the split module
                    out = self.call_module(part.call, part.call.forward, (out,), {})
                else:
                    out = self.create_proxy("call_function", part.call, (out, *part.args), {})
            return out
        return super().call_module(m, forward, args, kwargs)


class ConcreteSurgeryTracer(ConcreteValues, SurgeryTracer):
    """:class:`SurgeryTracer` with an example input run alongside (:mod:`.concrete`): control flow on shapes takes
    the example's branch."""

    # Buffers read in a forward become get_attr nodes, as parameters do: ``self.rel_indices.expand(B, -1, -1, -1)``
    # with B a proxy cannot run on the tensor itself (ConViT).
    proxy_buffer_attributes = True

    def module_for_target(self, target: str) -> nn.Module:
        return self.parts[target] if target in self.parts else super().module_for_target(target)


# Where a trace took the example's branches, gm.meta[SPECIALIZED] holds the input shape it holds for (no batch dim).
SPECIALIZED = "nepenthe_traced_for_shape"


def trace(model: nn.Module, example_input: torch.Tensor | None = None) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule with :class:`SurgeryTracer` (raises with advice when fx cannot).

    Where plain tracing fails and ``example_input`` is given, the trace runs it alongside: control flow on shapes
    (``if H % window:``, ``len(x.shape)``) takes the example's branch, and ``gm.meta[SPECIALIZED]`` holds the input
    shape (without the batch dim) that the graph is for. Control flow on the data still fails.
    """
    tracer = SurgeryTracer()
    try:
        return _module(model, tracer, tracer.trace(model))
    except Exception as err:  # fx raises many types (TraceError, TypeError on data-dependent control flow)
        where = f" in {tracer.failed_in}" if tracer.failed_in else ""
        failure = RuntimeError(
            f"shrink needs a torch.fx trace of {type(model).__name__}, which failed{where}: {err}. Wrap "
            "data-dependent code in torch.fx.wrap'ed functions (as torchvision's swin does) or shrink a traceable "
            "submodule"
        )
        failure.__cause__ = err
        if example_input is None:
            raise failure from err
    concrete = ConcreteSurgeryTracer()
    concrete.start(example_input.clone())  # the model may write into its input
    # The runs must leave the model as it was: a BatchNorm in training mode would update its running statistics,
    # and a cache built on the first forward (ConViT's relative positions) replaces a buffer.
    buffers = _saved_buffers(model)
    try:
        with torch.no_grad():  # one eager run first: caches built lazily then hold the example's shape
            model(example_input.clone())
        gm = _module(model, concrete, concrete.trace(model, concrete_args=_defaults_after_first(model)))
        if concrete.specialized:
            gm.meta[SPECIALIZED] = tuple(example_input.shape[1:])
            _check_batch_free(model, gm, example_input)
    except TraceFailure:
        raise
    except Exception:  # noqa: BLE001 - the plain trace's failure says more
        raise failure from failure.__cause__
    finally:
        _restore_buffers(buffers)
    return gm


def _saved_buffers(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]]:
    """Each module's buffers: the module, the name, the tensor itself and a copy of its values."""
    return [
        (module, name, b, None if b is None else b.clone())
        for module in model.modules()
        for name, b in module._buffers.items()
    ]


def _restore_buffers(saved: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]]) -> None:
    """Put back the buffers :func:`_saved_buffers` saw, the same tensors with the same values (a buffer that a
    forward replaced by a tensor of another shape is not overwritten, which would broadcast into it)."""
    with torch.no_grad():
        for module, name, b, values in saved:
            module._buffers[name] = b
            if b is not None:
                b.copy_(values)


def _defaults_after_first(model: nn.Module) -> dict[str, Any]:
    """The defaults of ``model.forward``'s parameters after the input (``mask=None``): the example run gives only
    the input, so those keep their defaults instead of becoming proxies that are never None."""
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _module(model: nn.Module, tracer: SurgeryTracer, graph: fx.Graph) -> fx.GraphModule:
    _name_shared_calls(graph)
    if not tracer.parts:
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    targets = {n.target for n in graph.nodes if n.op in ("call_module", "get_attr")}
    root = {t: tracer.parts[t] if t in tracer.parts else operator.attrgetter(t)(model) for t in targets}
    gm = fx.GraphModule(root, graph, type(model).__name__)
    gm.training = model.training  # as a module root gives it (not gm.train(), which would set every submodule's)
    return gm


class TraceFailure(RuntimeError):
    """A trace that succeeded but cannot serve (it holds for one batch size)."""


def _check_batch_free(model: nn.Module, gm: fx.GraphModule, example_input: torch.Tensor) -> None:
    """A graph traced with the example's branches must hold for other batch sizes (its guard checks the rest)."""
    x = torch.cat([example_input, example_input[:1]])
    with torch.no_grad():
        try:
            same = compare_outputs(model(x), gm(x))[1] <= 1e-4
        except Exception:  # noqa: BLE001 - a shape error here is the same finding
            same = False
    if not same:
        raise TraceFailure(
            f"shrink traced {type(model).__name__} with its control flow on shapes fixed by the example input, "
            "but the result depends on the batch size: shrink a submodule whose control flow fx can trace"
        )


def _name_shared_calls(graph: fx.Graph) -> None:
    """Put in ``meta["call_site"]`` the layer name of each call of a module called more than once (``relu@1``, as
    profiles name them, :func:`call_site_names`); a :class:`CallSiteDispatch`'s calls by the dispatch's name."""
    calls: list[tuple[fx.Node, tuple[str, int]]] = []
    seen: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        call = node.meta.get("call_of")
        if call is None:
            target = str(node.target)
            call = (target, seen.get(target, 0))
            seen[target] = call[1] + 1
        calls.append((node, call))
    names = call_site_names(call for _, call in calls)
    for node, call in calls:
        if names[call] != node.target:
            node.meta["call_site"] = names[call]
