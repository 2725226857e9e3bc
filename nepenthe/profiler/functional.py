"""Functional activations (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.gelu`` ...) inside a ``forward``.

A forward pre-hook sees only activation *modules*. Functional calls are invisible to it, so this module
offers two things:

- :func:`prepare` rewrites them into activation modules with ``torch.fx`` (the model must be traceable);
- :class:`FunctionalCallDetector` watches one forward pass through a ``TorchFunctionMode`` and lists the
  functional activation calls the profiler could not count, with the module that made them.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from ..activations import ActivationTracer, activation_spec


@dataclass(frozen=True)
class _Functional:
    name: str
    module_class: type[nn.Module]
    params: tuple[tuple[str, object], ...]  # the module's constructor arguments, with their defaults
    always_inplace: bool = False


def _table() -> dict[object, _Functional]:
    inplace = (("inplace", False),)
    entries: list[tuple[object, _Functional]] = [
        (F.relu, _Functional("relu", nn.ReLU, inplace)),
        (torch.relu, _Functional("relu", nn.ReLU, ())),
        (F.relu_, _Functional("relu", nn.ReLU, (), always_inplace=True)),
        (torch.relu_, _Functional("relu", nn.ReLU, (), always_inplace=True)),
        (torch.Tensor.relu, _Functional("relu", nn.ReLU, ())),
        (torch.Tensor.relu_, _Functional("relu", nn.ReLU, (), always_inplace=True)),
        (F.relu6, _Functional("relu6", nn.ReLU6, inplace)),
        (F.hardtanh, _Functional("hardtanh", nn.Hardtanh, (("min_val", -1.0), ("max_val", 1.0)) + inplace)),
        (F.hardtanh_, _Functional("hardtanh", nn.Hardtanh, (("min_val", -1.0), ("max_val", 1.0)), True)),
        (F.leaky_relu, _Functional("leaky_relu", nn.LeakyReLU, (("negative_slope", 0.01),) + inplace)),
        (F.leaky_relu_, _Functional("leaky_relu", nn.LeakyReLU, (("negative_slope", 0.01),), True)),
        (F.elu, _Functional("elu", nn.ELU, (("alpha", 1.0),) + inplace)),
        (F.elu_, _Functional("elu", nn.ELU, (("alpha", 1.0),), True)),
        (F.gelu, _Functional("gelu", nn.GELU, (("approximate", "none"),))),
        (F.silu, _Functional("silu", nn.SiLU, inplace)),
        (F.mish, _Functional("mish", nn.Mish, inplace)),
        (F.hardswish, _Functional("hardswish", nn.Hardswish, inplace)),
        (F.hardsigmoid, _Functional("hardsigmoid", nn.Hardsigmoid, inplace)),
        (F.prelu, _Functional("prelu", nn.PReLU, ())),
    ]
    return dict(entries)


FUNCTIONAL_ACTIVATIONS: dict[object, _Functional] = _table()
_METHODS = {"relu": FUNCTIONAL_ACTIVATIONS[torch.Tensor.relu], "relu_": FUNCTIONAL_ACTIVATIONS[torch.Tensor.relu_]}


@dataclass(frozen=True)
class FunctionalCall:
    """One functional activation call seen in a forward pass: the function and the module whose forward made it."""

    function: str
    caller: str


class FunctionalCallDetector(TorchFunctionMode):
    """Records functional activation calls made outside activation modules during one forward pass.

    ``caller()`` gives the qualified name of the module running now (``""`` for the root); calls made while an
    activation module runs (``nn.ReLU.forward`` calls ``F.relu``) are not reported.
    """

    def __init__(self, is_tracked: Callable[[type[nn.Module]], bool], caller: Callable[[], tuple[str, bool]]):
        super().__init__()
        self._is_tracked = is_tracked
        self._caller = caller
        self.calls: list[FunctionalCall] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        entry = FUNCTIONAL_ACTIVATIONS.get(func)
        if entry is not None and self._is_tracked(entry.module_class):
            caller, inside_activation = self._caller()
            if not inside_activation:
                self.calls.append(FunctionalCall(entry.name, caller))
        return func(*args, **(kwargs or {}))


class ModuleStack:
    """Pre/post hooks on every module of a model that keep the stack of modules now running (one forward)."""

    def __init__(self, model: nn.Module, also_activation: Callable[[nn.Module], bool] = lambda m: False) -> None:
        self._stack: list[tuple[str, bool]] = [("", activation_spec(model) is not None)]
        self._handles = []
        for name, module in model.named_modules():
            if not name:
                continue
            is_act = (
                activation_spec(module) is not None
                or type(module).__module__ == "torch.nn.modules.activation"
                or also_activation(module)
            )
            self._handles.append(module.register_forward_pre_hook(self._push(name, is_act)))
            self._handles.append(module.register_forward_hook(self._pop, always_call=True))

    def _push(self, name: str, is_act: bool) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            self._stack.append((name, is_act or self._stack[-1][1]))

        return hook

    def _pop(self, module: nn.Module, args: tuple, output: object) -> None:
        if len(self._stack) > 1:
            self._stack.pop()

    def current(self) -> tuple[str, bool]:
        """(qualified name of the innermost running module, whether an activation module is running)."""
        return self._stack[-1]

    def remove(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []


def describe_unseen(calls: list[FunctionalCall]) -> str:
    """A warning text listing functional calls the profiler could not count."""
    where: dict[tuple[str, str], int] = {}
    for c in calls:
        where[(c.function, c.caller)] = where.get((c.function, c.caller), 0) + 1
    listed = ", ".join(
        f"{fn} in {caller or '<root>'}" + (f" (x{n})" if n > 1 else "") for (fn, caller), n in where.items()
    )
    return (
        f"nepenthe.profile: {len(calls)} functional activation call(s) per forward pass are NOT counted: {listed}. "
        "Only activation modules are hooked; rewrite functional calls into modules with "
        "`model = nepenthe.prepare(model)` (torch.fx) before profiling."
    )


class _CallerTracer(ActivationTracer):
    """An fx tracer that keeps activation modules as leaves and notes which module made each node."""

    def __init__(self) -> None:
        super().__init__()
        self._stack = [""]

    def call_module(self, m, forward, args, kwargs):
        self._stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._stack.pop()

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["nepenthe_caller"] = self._stack[-1]
        return node


def _module_for(entry: _Functional, node: fx.Node) -> nn.Module | str:
    """The activation module equivalent to functional call ``node``, or the reason it cannot be built."""
    args = list(node.args[1:])
    values: dict[str, object] = {}
    for index, (param, default) in enumerate(entry.params):
        values[param] = args[index] if index < len(args) else node.kwargs.get(param, default)
    extra = set(node.kwargs) - {p for p, _ in entry.params} - {"input"}
    if len(args) > len(entry.params) or extra:
        return f"unexpected arguments {args[len(entry.params) :]} {sorted(extra)}"
    if any(isinstance(v, fx.Node) for v in values.values()):
        return "an argument is computed in the forward pass (not a constant)"
    if entry.always_inplace:
        values["inplace"] = True
    accepted = inspect.signature(entry.module_class).parameters
    return entry.module_class(**{k: v for k, v in values.items() if k in accepted})


def _free_name(gm: fx.GraphModule, prefix: str, base: str, taken: set[str]) -> str:
    k = 0
    while True:
        name = f"{prefix}{base}_f{k}"
        if name not in taken:
            try:
                gm.get_submodule(name)
            except AttributeError:
                return name
        k += 1


def prepare(model: nn.Module, tracer: fx.Tracer | None = None) -> fx.GraphModule:
    """Rewrite functional activations (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.gelu``, ``F.relu6``,
    ``F.hardtanh``, ``F.leaky_relu``, ``F.silu``, ``F.elu``, ``F.mish``, ``F.hardswish``, ``F.hardsigmoid``) into
    activation modules, so the profiler counts them.

    Returns a new ``torch.fx.GraphModule`` that computes the same function. It shares ``model``'s submodules
    and parameters (``model`` itself is not modified; deep-copy it first if you need them separate). A new
    module is named after the module whose ``forward`` made the call and the call order:
    ``features.relu_f0`` for DenseNet's final ``F.relu``. The model must be traceable by ``torch.fx``
    (no data-dependent control flow); if it is not, a ``RuntimeError`` says so. Calls whose arguments are not
    constants (``F.prelu``'s weight) are left as they are, with a warning.

    Example::

        >>> import torch, torchvision, nepenthe
        >>> model = nepenthe.prepare(torchvision.models.densenet121())
        >>> with nepenthe.profile(model) as prof:
        ...     _ = model(torch.randn(2, 3, 64, 64))
        >>> "relu_f0" in prof.layers
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    tracer = tracer or _CallerTracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure gets the same explanation
        raise RuntimeError(
            f"nepenthe.prepare could not trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}). "
            "Profile the model as it is (functional activations stay uncounted, with a warning), or replace "
            "the functional calls by activation modules in its code."
        ) from err
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    taken: set[str] = set()
    skipped: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op == "call_function":
            entry = FUNCTIONAL_ACTIVATIONS.get(node.target)
        elif node.op == "call_method":
            entry = _METHODS.get(node.target)
        else:
            entry = None
        if entry is None:
            continue
        module = _module_for(entry, node)
        if isinstance(module, str):
            skipped.append(f"{entry.name} in {node.meta.get('nepenthe_caller') or '<root>'}: {module}")
            continue
        caller = node.meta.get("nepenthe_caller", "")
        name = _free_name(gm, f"{caller}." if caller else "", entry.name, taken)
        taken.add(name)
        gm.add_submodule(name, module)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0] if node.args else node.kwargs["input"],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    if skipped:
        warnings.warn("nepenthe.prepare left functional calls as they are: " + "; ".join(skipped), stacklevel=2)
    gm.graph.lint()
    gm.recompile()
    return gm
