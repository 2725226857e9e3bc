"""torch.fx tracing that runs an example input alongside, so that control flow on shapes takes the example's branch.

fx cannot trace ``if H != self.window_size:`` or ``len(x.shape)``: its proxies have no values. :class:`ConcreteValues`
(a mixin for an ``fx.Tracer``) computes each node's value on an example input as it records the node. A proxy used
as a bool, an int, a length or an iterable takes its example value: the graph keeps the branch the example took,
and :attr:`ConcreteValues.specialized` says that this happened, so the traced model holds only for inputs shaped as
the example. Shapes used as tensors (``x.view(B, H * W, C)``) stay graph nodes.

Only values computed from shapes, dtypes and devices may decide: one computed from the data (``x.sum() > 0``,
``x.max().item()``) raises fx's ``TraceError`` as plain tracing does, since the example's branch would not hold for
other inputs of its shape.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.proxy import TraceError

# Reads of a tensor's metadata: their results do not depend on its values.
_METADATA_ATTRS = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad", "type"})
_METADATA_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement", "stride", "is_contiguous"})


class _Concrete:
    """``len``, ``int``, ``float`` and ``index`` of a proxy: its node's example value (shapes only)."""

    def _concrete(self) -> Any:
        return self.tracer.decide(self)

    def __len__(self) -> int:
        return len(self._concrete())

    def __int__(self) -> int:
        return int(self._concrete())

    def __float__(self) -> float:
        return float(self._concrete())

    def __index__(self) -> int:
        return operator.index(self._concrete())

    def __getattr__(self, k: str) -> ConcreteAttribute | str:
        if k == "type" and isinstance(self, fx.proxy.Attribute) and self.attr == "device":
            return self._concrete().type  # x.device.type: a string for Python's logic (torch.autocast's device_type)
        return ConcreteAttribute(self, k)


class ConcreteProxy(_Concrete, fx.Proxy):
    """The proxies of a :class:`ConcreteValues` trace."""


class ConcreteAttribute(_Concrete, fx.proxy.Attribute):
    """``x.shape`` of a :class:`ConcreteProxy` ``x`` (a node only once used)."""


class ConcreteValues:
    """Mixin for an ``fx.Tracer`` (first in the bases): call :meth:`start` with the example input before
    ``trace``. Module calls find their modules through ``module_for_target``, which the tracer may extend."""

    specialized = False
    _evaluating = False

    def start(self, example: torch.Tensor) -> None:
        self._example = example
        self._values: dict[fx.Node, Any] = {}
        self._from_data: set[fx.Node] = set()  # nodes whose values depend on tensor data
        self.specialized = False

    def decide(self, obj: fx.Proxy) -> Any:
        """The example value of ``obj``, which the trace takes as fixed (it must come from shapes, not data)."""
        node = obj.node  # an Attribute (x.shape) makes its getattr node here
        if node in self._from_data:
            raise TraceError(
                "symbolically traced variables cannot be used as inputs to control flow (this one comes from the "
                "tensors' values, not their shapes)"
            )
        self.specialized = True
        return self.value_of(obj)

    def module_for_target(self, target: str) -> nn.Module:
        return self.root.get_submodule(target)

    # fx.Tracer's hooks
    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        if self._evaluating:  # a module called while a value is computed runs for real
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self._evaluating:  # a parameter read while a value is computed is the parameter
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        value = self._values[node] = self._run(node)
        reads_metadata = (
            node.op == "call_function" and node.target is getattr and node.args[1] in _METADATA_ATTRS
        ) or (node.op == "call_method" and node.target in _METADATA_METHODS)
        if isinstance(value, torch.Tensor) or (
            not reads_metadata and any(n in self._from_data for n in node.all_input_nodes)
        ):
            self._from_data.add(node)
        return ConcreteProxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.decide(obj))

    def iter(self, obj: fx.Proxy):
        return iter([obj[i] for i in range(len(self.decide(obj)))])

    def keys(self, obj: fx.Proxy):
        return self.decide(obj).keys()

    # values
    def value_of(self, obj: Any) -> Any:
        """The example value of a proxy (or of a structure holding proxies and nodes)."""
        if isinstance(obj, fx.proxy.Attribute):
            return getattr(self.value_of(obj.root), obj.attr)
        if isinstance(obj, fx.Proxy):
            return self.value_of(obj.node)
        if isinstance(obj, fx.Node):  # nodes fx makes without a proxy (get_attr of a tensor constant) run here
            if obj not in self._values:
                self._values[obj] = self._run(obj)
            return self._values[obj]
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
            return type(obj)(*(self.value_of(o) for o in obj))
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.value_of(o) for o in obj)
        if isinstance(obj, dict):
            return {k: self.value_of(v) for k, v in obj.items()}
        if isinstance(obj, slice):
            return slice(self.value_of(obj.start), self.value_of(obj.stop), self.value_of(obj.step))
        return obj

    def _run(self, node: fx.Node) -> Any:
        # While fx traces, every module call comes to call_module and a parameter read as an attribute becomes a
        # node: while a value is computed, both run for real (call_module and getattr above).
        args, kwargs = self.value_of(node.args), self.value_of(node.kwargs)
        if node.op == "placeholder":
            return self._example if not any(n.op == "placeholder" for n in self._values) else (args or (None,))[0]
        before, self._evaluating = self._evaluating, True
        try:
            with torch.no_grad():
                if node.op == "get_attr":
                    return operator.attrgetter(node.target)(self.root)
                if node.op == "call_module":
                    return self.module_for_target(node.target)(*args, **kwargs)
                if node.op == "call_function":
                    return node.target(*args, **kwargs)
                if node.op == "call_method":
                    return getattr(args[0], node.target)(*args[1:], **kwargs)
                return None  # output
        finally:
            self._evaluating = before
