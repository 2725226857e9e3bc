"""Which conv/linear layer feeds each activation call site: the layers the budget prunes (METHOD.md section 3).

The graph is read with ``torch.fx``: from an activation's input, walk back through BatchNorm, pooling, reshapes
and additions to the nearest conv/linear. At an addition (a residual join) the walk follows the operand whose
nearest conv/linear lies deepest in the network (most conv/linear layers on its longest path from the input):
the residual branch (ResNet's ``conv2`` before ``bn2``), never the shortcut (``downsample.0``, or the previous
block for an identity skip), which METHOD.md says is not pruned. The walk stops at another activation: such a
call site has no prunable layer of its own.

Models that ``torch.fx`` cannot trace fall back to execution order: the last conv/linear that ran before the
activation, skipping modules whose name marks them as a shortcut (``downsample``, ``shortcut``). Between
iterations the loop uses execution order restricted to the layers found on the dense model
(:func:`feeding_calls_in_order`): linearized call sites (a dispatch module with control flow) defeat symbolic
tracing, and the restriction keeps shortcut convs out exactly as the graph walk did.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import fx, nn

from ..activations import ActivationTracer, activation_spec
from ..profiler.callsites import call_site_names

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_SHORTCUT_WORDS = ("downsample", "shortcut")


def is_weighted(module: nn.Module | None) -> bool:
    """True for the layer kinds the budget prunes (conv 1-3d, linear)."""
    return isinstance(module, WEIGHTED)


def feeding_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> dict[str, str]:
    """Activation call-site name -> qualified name of the conv/linear module whose output it reads.

    Call sites with no such layer (an activation right after another activation) are left out. Names follow
    :mod:`nepenthe.profiler.callsites` (``NAME@k`` for a module called k > 1 times).

    Example::

        >>> import torch, torchvision
        >>> feeding_layers(torchvision.models.resnet18())["layer1.0.relu@1"]
        'layer1.0.conv2'
    """
    by_call = feeding_calls(model, example_input)
    names = call_site_names(by_call)
    return {names[key]: layer for key, layer in by_call.items() if layer is not None}


def feeding_calls(model: nn.Module, example_input: torch.Tensor | None = None) -> dict[tuple[str, int], str | None]:
    """Like :func:`feeding_layers`, keyed by ``(activation module name, call index)``; None where no layer feeds it."""
    try:
        return _by_graph(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means: use execution order instead
        if example_input is None:
            raise ValueError(
                f"torch.fx cannot trace {type(model).__name__} ({type(err).__name__}: {err}); pass example_input "
                "so that the prunable layers can be found from execution order"
            ) from err
        warnings.warn(
            f"torch.fx cannot trace {type(model).__name__}; prunable layers are taken from execution order",
            stacklevel=2,
        )
        return _by_execution(model, example_input, lambda name: not any(w in name for w in _SHORTCUT_WORDS))


def feeding_calls_in_order(
    model: nn.Module, example_input: torch.Tensor, allowed: set[str]
) -> dict[tuple[str, int], str | None]:
    """For each activation call, the last module of ``allowed`` (conv/linear names) that ran before it.

    Usage (a sketch)::

        dense = feeding_calls(model)
        feeding_calls_in_order(model, x, {v for v in dense.values() if v})
    """
    return _by_execution(model, example_input, lambda name: name in allowed)


def _by_graph(model: nn.Module) -> dict[tuple[str, int], str | None]:
    graph = ActivationTracer().trace(model)
    modules = dict(model.named_modules())

    def module_of(node: fx.Node) -> nn.Module | None:
        return modules.get(node.target) if node.op == "call_module" else None

    depth: dict[fx.Node, int] = {}
    for node in graph.nodes:
        base = max((depth[i] for i in node.all_input_nodes), default=0)
        depth[node] = base + (1 if is_weighted(module_of(node)) else 0)

    memo: dict[fx.Node, fx.Node | None] = {}

    def source(node: fx.Node) -> fx.Node | None:
        if node in memo:
            return memo[node]
        module = module_of(node)
        if is_weighted(module):
            found: fx.Node | None = node
        elif module is not None and activation_spec(module) is not None:
            found = None
        else:
            candidates = [s for s in (source(i) for i in node.all_input_nodes) if s is not None]
            found = max(candidates, key=lambda s: depth[s], default=None)
        memo[node] = found
        return found

    calls: dict[tuple[str, int], str | None] = {}
    seen: dict[str, int] = {}
    for node in graph.nodes:
        module = module_of(node)
        if module is None or activation_spec(module) is None:
            continue
        index = seen.get(node.target, 0)
        seen[node.target] = index + 1
        inputs = node.all_input_nodes
        feeder = source(inputs[0]) if inputs else None
        calls[(str(node.target), index)] = str(feeder.target) if feeder is not None else None
    return calls


def _by_execution(
    model: nn.Module, example_input: torch.Tensor, eligible: Callable[[str], bool]
) -> dict[tuple[str, int], str | None]:
    last: list[str | None] = [None]
    calls: dict[tuple[str, int], str | None] = {}
    seen: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if is_weighted(module) and eligible(name):

            def after(mod: nn.Module, args: tuple, out: object, name: str = name) -> None:
                last[0] = name

            handles.append(module.register_forward_hook(after))
        elif name and activation_spec(module) is not None:

            def before(mod: nn.Module, args: tuple, name: str = name) -> None:
                index = seen.get(name, 0)
                seen[name] = index + 1
                calls[(name, index)] = last[0]
                last[0] = None

            handles.append(module.register_forward_pre_hook(before))
    was_training = model.training
    model.eval()  # a train-mode pass would move BatchNorm running statistics
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls
