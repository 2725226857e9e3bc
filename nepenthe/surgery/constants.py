"""Constant subgraphs: layers whose output does not depend on the model input, replaced by their value.

A conv or linear whose weight is entirely zero (after BatchNorm and affine folding) outputs its bias whatever its
input. Everything computed only from such outputs is a constant too: BatchNorm, affine maps, activations (an
activation of a constant is a constant, exactly, linearized or not), pooling, flatten, and later convs, whose zero
padding makes the constant position-dependent. :func:`constant_pass` replaces each maximal constant subgraph by
one :class:`ConstantMap` holding its value, computed once in float64 for the traced input shape (constant over
the batch), and turns ``add(x, constant)`` into a bias add: a per-channel :class:`BiasAdd`, which the affine
fold then merges into an adjacent conv/linear where that is exact, or a :class:`MapAdd` for a position-dependent
constant. This is how NEPENTHE's fully pruned residual branches (METHOD.md 5) disappear.

The values are exact for inputs of the traced shape with finite entries (a zero weight times an infinity is not
zero). Every edit is recorded (kinds ``constant`` and ``bias_add``) so that plans replay them.
"""

from __future__ import annotations

import copy
import operator
import re
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..activations import activation_spec
from .affine import ChannelAffine

CONSTANT_EDITS = ("constant", "bias_add")
CONSTANT_MODULES = ("constant_map", "bias_add", "map_add")


class ConstantMap(nn.Module):
    """The value of a constant subgraph: ``value`` (shape ``(1, ...)``) repeated over the batch of ``ref``.

    ``ref`` (a tensor the subgraph used to read) only gives the batch size, dtype and device. The output is a fresh
    tensor, so an in-place op downstream cannot change the buffer.

    Example::

        >>> m = ConstantMap(torch.ones(1, 2))
        >>> m(torch.zeros(3, 5)).shape
        torch.Size([3, 2])
    """

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        if value.dim() < 1 or value.shape[0] != 1:
            raise ValueError(f"value must have a batch dim of 1, got shape {tuple(value.shape)}")
        self.register_buffer("value", value.detach().clone())

    def forward(self, ref: torch.Tensor) -> torch.Tensor:
        v = self.value.to(device=ref.device, dtype=ref.dtype)
        return v.expand(ref.shape[0], *v.shape[1:]).clone(memory_format=torch.contiguous_format)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.value.shape[1:])}"


class BiasAdd(ChannelAffine):
    """``x + bias`` with one bias per channel along ``channel_dim``.

    A :class:`ChannelAffine` with scale 1 (the scale buffer stays ones and is not used), so ``shrink`` folds it into
    the conv/linear before it (its bias) or after it (a border bias where padded) like any affine map.

    Example::

        >>> BiasAdd(torch.tensor([1.0, 2.0]))(torch.zeros(1, 2, 1, 1)).flatten().tolist()
        [1.0, 2.0]
    """

    def __init__(self, bias: torch.Tensor, channel_dim: int = 1) -> None:
        super().__init__(torch.ones_like(bias), bias, channel_dim)
        with torch.no_grad():  # ChannelAffine stores float32; keep the caller's precision
            self.scale = torch.ones_like(bias).detach().clone()
            self.shift = bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift.to(x.dtype).view(self.broadcast_shape(x.dim()))


class MapAdd(nn.Module):
    """``x + value``: a constant that differs between positions (``value`` has shape ``(1, ...)``).

    Example::

        >>> MapAdd(torch.arange(2.0).view(1, 2))(torch.ones(3, 2))[0].tolist()
        [1.0, 2.0]
    """

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value.to(device=x.device, dtype=x.dtype)


def constant_module_from_spec(spec: dict) -> nn.Module:
    """An (uninitialised) module of a constant edit's recorded shape (plans load the values from a state_dict).

    Example::

        >>> constant_module_from_spec({"type": "bias_add", "channels": 8, "channel_dim": 1})
        BiasAdd(channels=8, channel_dim=1, site='', exact=True)
    """
    kind = spec["type"]
    if kind == "constant_map":
        return ConstantMap(torch.zeros(spec["shape"]))
    if kind == "bias_add":
        return BiasAdd(torch.zeros(spec["channels"]), spec["channel_dim"])
    if kind == "map_add":
        return MapAdd(torch.zeros(spec["shape"]))
    raise ValueError(f"plan: unknown module type {kind!r}")


def apply_constant_edit(gm: fx.GraphModule, edit: dict, module: nn.Module) -> None:
    """Apply a recorded ``constant`` or ``bias_add`` edit: a new node calling ``module`` takes over a subgraph.

    The node reads ``edit['input']``, stands just before ``edit['output_of']`` and takes over its users; the
    ``edit['removed']`` nodes are erased.

    Usage (a sketch)::

        for edit in plan["edits"]:  # what plan replay does (through rewrite.apply_edit)
            apply_constant_edit(gm, edit, constant_module_from_spec(edit["spec"]))
    """
    nodes = {n.name: n for n in gm.graph.nodes}
    missing = [n for n in [edit["input"], edit["output_of"], *edit["removed"]] if n not in nodes]
    if missing:
        raise ValueError(f"plan: nodes {missing} are not in the traced model; is it the architecture the plan is for?")
    out = nodes[edit["output_of"]]
    gm.add_submodule(edit["target"], module)
    with gm.graph.inserting_before(out):
        new = gm.graph.call_module(edit["target"], (nodes[edit["input"]],))
    if edit.get("node") not in (None, new.name):
        raise ValueError(f"plan: the new node is {new.name!r}, the plan recorded {edit['node']!r}")
    new.meta = dict(out.meta)
    out.replace_all_uses_with(new)
    for name in reversed(edit["removed"]):
        gm.graph.erase_node(nodes[name])


# ---- which nodes are constant

_ELEMENTWISE = {
    torch.relu,
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.leaky_relu,
    F.elu,
    F.softplus,
    torch.sigmoid,
    torch.tanh,
    F.sigmoid,
    F.tanh,
    operator.neg,
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
}
_POOLS = {F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "add", "mul", "sub"}
_ADDS = (operator.add, operator.iadd, torch.add)
_PER_SAMPLE_MODULES = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    ChannelAffine,
    ConstantMap,
    MapAdd,
    nn.Identity,
    nn.modules.dropout._DropoutNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def _is_zero_layer(m: nn.Module | None) -> bool:
    weight = getattr(m, "weight", None)
    return (
        isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        and isinstance(weight, torch.Tensor)
        and not bool(weight.detach().any())
    )


def _is_source(s: Any, n: fx.Node) -> bool:
    """A node whose output does not depend on its input: an all-zero conv/linear or an earlier constant."""
    if n.op != "call_module" or len(n.args) != 1 or n.kwargs or not isinstance(n.args[0], fx.Node):
        return False
    m = s.module(n)
    return isinstance(m, ConstantMap) or _is_zero_layer(m)


def _start_dim(n: fx.Node) -> object:
    return n.kwargs.get("start_dim", n.args[1] if len(n.args) > 1 else 0)


def _per_sample(s: Any, n: fx.Node) -> bool:
    """True when ``n`` computes each sample from that sample alone (so a constant input gives a constant)."""
    if n.op == "call_module":
        m = s.module(n)
        if getattr(m, "training", False) and isinstance(
            m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
        ):
            return False
        if isinstance(m, nn.Flatten):
            return m.start_dim >= 1
        return isinstance(m, _PER_SAMPLE_MODULES) or activation_spec(m) is not None
    if n.op == "call_function":
        if n.target is torch.flatten:
            return isinstance(_start_dim(n), int) and _start_dim(n) >= 1
        return n.target in _ELEMENTWISE or n.target in _POOLS
    if n.op == "call_method":
        if n.target == "flatten":
            return isinstance(_start_dim(n), int) and _start_dim(n) >= 1
        return n.target in _METHODS
    return False


def constant_nodes(s: Any) -> set[fx.Node]:
    """The nodes of ``s.gm`` whose value does not depend on the model input (``s``: a :class:`Surgeon`).

    Usage (a sketch)::

        [n.name for n in constant_nodes(Surgeon(gm))]
        # ['layer3_0_conv1', 'layer3_0_bn1', 'layer3_0_relu', 'layer3_0_conv2', 'layer3_0_bn2']
    """
    const: set[fx.Node] = set()
    for n in s.gm.graph.nodes:
        inputs = n.all_input_nodes
        if _is_source(s, n) or (inputs and all(a in const for a in inputs) and _per_sample(s, n)):
            const.add(n)
    return const


def _evaluate(s: Any, region: list[fx.Node]) -> dict[fx.Node, torch.Tensor]:
    """Float64 values (batch 1, on the CPU) of the constant ``region``, in topological order."""
    values: dict[fx.Node, torch.Tensor] = {}

    def arg(a: fx.Node) -> torch.Tensor:
        if a in values:
            return values[a].clone()
        # the input of a source: its value does not matter, its shape does
        return torch.zeros((1, *s.shape(a)[1:]), dtype=torch.float64)

    for n in region:
        args = fx.node.map_arg(n.args, arg)
        kwargs = fx.node.map_arg(n.kwargs, arg)
        with torch.no_grad():
            if n.op == "call_module":
                m = copy.deepcopy(s.module(n)).to("cpu", torch.float64).eval()
                v = m(*args, **kwargs)
            elif n.op == "call_function":
                v = n.target(*args, **kwargs)
            else:
                v = getattr(args[0], n.target)(*args[1:], **kwargs)
        values[n] = v
    return values


# ---- the pass


def _dtype_device(s: Any, nodes: list[fx.Node]) -> tuple[torch.dtype, torch.device]:
    for n in nodes:
        m = s.module(n)
        for t in [*m.parameters(), *m.buffers()] if m is not None else []:
            if t.dtype.is_floating_point:
                return t.dtype, t.device
    for t in s.gm.parameters():
        return t.dtype, t.device
    return torch.float32, torch.device("cpu")


def _new_target(gm: fx.GraphModule, prefix: str, what: str) -> str:
    base = f"{prefix.replace('.', '_') or 'model'}_{what}"
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}{i}"
    return name


def _macs(s: Any, n: fx.Node) -> int:
    m, shp = s.module(n), s.shape(n)
    if shp is None or not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
        return 0
    per_output = m.weight[0].numel() if isinstance(m, nn.modules.conv._ConvNd) else m.in_features
    return int(torch.Size(shp[1:]).numel()) * per_output


def _label(s: Any, removed: list[fx.Node]) -> tuple[str, str]:
    """``(prefix, description)`` of a constant subgraph: e.g. ``layer3.0``, ``conv1, conv2: all-zero weights``."""
    layers = [n for n in removed if isinstance(s.module(n), (nn.modules.conv._ConvNd, nn.Linear))]
    targets = [str(n.target).split(".") for n in layers] or [str(n.target).split(".") for n in removed]
    prefix: list[str] = []
    for parts in zip(*[t[:-1] for t in targets], strict=False):
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    k = len(prefix)
    zero = [".".join(str(n.target).split(".")[k:]) for n in layers if _is_zero_layer(s.module(n))]
    other = [".".join(str(n.target).split(".")[k:]) for n in layers if not _is_zero_layer(s.module(n))]
    parts = [f"{', '.join(zero)}: all-zero weights"] if zero else []
    if other:
        parts.append(f"{', '.join(other)}: applied to a constant")
    return ".".join(prefix), "; ".join(parts) or "no layer"


def _replace_region(s: Any, f: fx.Node, const: set[fx.Node]) -> tuple[fx.Node, str, list[fx.Node], int] | None:
    """Replace the constant subgraph ending at ``f`` by a :class:`ConstantMap` node (edit ``constant``)."""
    order = {n: i for i, n in enumerate(s.gm.graph.nodes)}
    region, todo = {f}, [f]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a in const and a not in region:
                region.add(a)
                todo.append(a)
    ordered = sorted(region, key=order.__getitem__)
    removable = {f}
    for n in reversed(ordered):
        if n is not f and all(u in removable for u in n.users):
            removable.add(n)
    removed = [n for n in ordered if n in removable]
    if all(isinstance(s.module(n), ConstantMap) for n in removed):
        return None
    ref = next((a for a in ordered[0].all_input_nodes if a not in const), None)
    if ref is None:
        return None
    try:
        value = _evaluate(s, ordered)[f]
    except (RuntimeError, TypeError, ValueError):  # an op that cannot run on its recorded shape: leave it
        return None
    shp = s.shape(f)
    if not isinstance(value, torch.Tensor) or shp is None or tuple(value.shape) != (1, *shp[1:]):
        return None
    dtype, device = _dtype_device(s, removed)
    prefix, desc = _label(s, removed)
    module = ConstantMap(value.to(device=device, dtype=dtype))
    target = _new_target(s.gm, prefix, "constant")
    edit = {
        "kind": "constant",
        "what": f"constant subgraph of {prefix or 'the model'} ({desc}) replaced by its value",
        "target": target,
        "node": None,
        "spec": {"type": "constant_map", "shape": list(module.value.shape)},
        "input": ref.name,
        "output_of": f.name,
        "removed": [n.name for n in removed],
    }
    names = set(edit["removed"])
    notes = {
        site: f"removed: its layers computed a constant ({desc}), which shrink folded away"
        for site, (into, other) in s._site_folds.items()
        if into in names or other in names
    }
    notes.update({site: f"removed: it acted on a constant ({desc})" for n, site in s._site_of.items() if n in names})
    macs = sum(_macs(s, n) for n in removed)
    apply_constant_edit(s.gm, edit, module)
    new = next(n for n in s.gm.graph.nodes if n.op == "call_module" and n.target == target)
    edit["node"] = new.name
    s.edits.append(edit)
    s.__dict__.setdefault("constant_sites", {}).update(notes)
    return new, f"constant branch of {prefix or 'the model'} ({desc})", removed, macs


def _fold_bias(s: Any, c: fx.Node) -> str | None:
    """Turn ``add(y, c)`` of a :class:`ConstantMap` node ``c`` into a bias add on ``y`` (edit ``bias_add``)."""
    if len(c.users) != 1:
        return None
    (add,) = c.users
    if add.op != "call_function" or add.target not in _ADDS or add.kwargs or len(add.args) != 2:
        return None
    y = add.args[1] if add.args[0] is c else add.args[0]
    if not isinstance(y, fx.Node) or y is c or s.shape(y) is None or s.shape(y) != s.shape(add):
        return None
    if add.target is operator.iadd and add.args[0] is y and len(y.users) > 1:
        return None  # y is updated in place and read again later: a bias add would not update it
    value = s.module(c).value
    nd = value.dim()
    module: nn.Module = MapAdd(value)
    spec: dict = {"type": "map_add", "shape": list(value.shape)}
    kind = "a position-dependent bias map"
    for d in dict.fromkeys([nd - 1, 1] if s.is_linear(y) else [1, nd - 1]):
        if d < 1:
            continue
        rows = value[0].movedim(d - 1, 0).reshape(value.shape[d], -1)
        # the same value at every position, up to the rounding of the conv kernels that computed it (their
        # vectorised tails sum in another order); anything padding made position-dependent differs far more
        if bool(((rows - rows[:, :1]).abs() <= 1e-12 * float(rows.abs().max())).all()):
            module = BiasAdd(rows.mean(dim=1), 1 if d == 1 else -1)
            spec = {"type": "bias_add", "channels": rows.shape[0], "channel_dim": module.channel_dim}
            kind = "a per-channel bias"
            break
    target = _new_target(s.gm, re.sub(r"_constant\d*$", "", str(c.target)), "bias")
    edit = {
        "kind": "bias_add",
        "what": f"fold {c.target} into {kind} added to the output of {s._describe(y)}",
        "target": target,
        "node": None,
        "spec": spec,
        "input": y.name,
        "output_of": add.name,
        "removed": [c.name, add.name],
    }
    apply_constant_edit(s.gm, edit, module)
    edit["node"] = next(n for n in s.gm.graph.nodes if n.op == "call_module" and n.target == target).name
    s.edits.append(edit)
    return f"{kind} added to the output of {s._describe(y)}"


def constant_pass(s: Any) -> bool:
    """One constant edit on the :class:`Surgeon` ``s``; True when the graph changed.

    Replaces the first maximal constant subgraph (one that holds more than an earlier :class:`ConstantMap`) by
    its value and, where the value is added to a tensor, by a bias add on that tensor; or folds an earlier
    :class:`ConstantMap` that could not be folded then. Each replaced subgraph is reported as a merge.

    Usage (a sketch)::

        surgeon = Surgeon(gm)
        while constant_pass(surgeon):
            pass
    """
    from .rewrite import Decision

    const = constant_nodes(s)
    for f in list(s.gm.graph.nodes):
        if f not in const or all(u in const for u in f.users):
            continue
        replaced = _replace_region(s, f, const)
        if replaced is None:
            if isinstance(s.module(f), ConstantMap):
                into = _fold_bias(s, f)
                if into is not None:
                    s.decisions.append(Decision(f"fold {f.target} into {into}", True))
                    return True
            continue
        new, label, removed, macs = replaced
        into = _fold_bias(s, new)
        what = f"merge {label} into {into}" if into else f"merge {label} into a constant buffer"
        s.decisions.append(Decision(what, True, flops_before=macs, flops_after=0))
        return True
    return False


class InputShapeGuard(nn.Module):
    """Refuses inputs of another shape than the one a shrunk model holds for.

    Constants are computed for the traced input size (a padded conv makes them depend on it), and a model whose
    control flow depends on shapes is traced with the example's branches (:mod:`.concrete`): such a shrunk model is
    exact only at that size, and this guard makes any other size a clear error, never a wrong output.

    Example::

        >>> InputShapeGuard((3, 32, 32))(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"this shrunk model holds for inputs of shape (N, *{self.shape}) only (it folded constants computed "
                f"for that shape, or its trace took that shape's branches), got {tuple(x.shape)}; shrink the model "
                "again with an example input of the new shape"
            )
        return x

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def guard_input_shape(gm: fx.GraphModule, shape: tuple[int, ...]) -> None:
    """Put an :class:`InputShapeGuard` for ``shape`` (non-batch dims) on ``gm``'s first input."""
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    gm.add_submodule("input_shape_guard", InputShapeGuard(shape))
    with gm.graph.inserting_after(x):
        guard = gm.graph.call_module("input_shape_guard", (x,))
    x.replace_all_uses_with(guard, delete_user_cb=lambda user: user is not guard)
    gm.recompile()
