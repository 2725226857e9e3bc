"""Norm-then-activation modules of other libraries, traced as their parts so that shrink can fold the norm.

timm's ``BatchNormAct2d`` (the norm of its MobileNets, EfficientNets, RegNets, DenseNets, ResNetV2s) subclasses
``nn.BatchNorm2d`` and its forward is ``F.batch_norm``, then ``self.drop``, then ``self.act``. Traced as it is, the
norm would be a bare function call that no fold understands. :func:`norm_act_parts` gives a plain
``nn.BatchNorm2d`` that shares its parameters and buffers, and the children that follow it, for the tracer to call
in turn. The class is known by module and class name (nepenthe never imports timm), and only that exact class: a
subclass may compute something else.
"""

from __future__ import annotations

from torch import nn

# (module, class name) of the classes whose forward is BatchNorm2d's, then the child modules named here, in order.
_NORM_THEN_CHILDREN: dict[tuple[str, str], tuple[str, ...]] = {
    ("timm.layers.norm_act", "BatchNormAct2d"): ("drop", "act"),
}

# The name under the module's own at which a traced graph holds its plain norm: ``blocks.1.0.bn1.batch_norm``.
NORM_PART = "batch_norm"


def norm_act_parts(module: nn.Module) -> tuple[nn.BatchNorm2d, list[nn.Module]] | None:
    """``(norm, children)`` whose calls in turn compute ``module``, or None where ``module`` is no known norm-act.

    ``norm`` is a new ``nn.BatchNorm2d`` holding ``module``'s own parameters and buffers (the same tensors), in
    ``module``'s training mode.
    """
    cls = type(module)
    children = _NORM_THEN_CHILDREN.get((cls.__module__, cls.__qualname__))
    if children is None or not isinstance(module, nn.BatchNorm2d):
        return None
    norm = nn.BatchNorm2d(
        module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, device="meta"
    )
    for name in ("weight", "bias"):
        norm._parameters[name] = module._parameters[name]
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        norm._buffers[name] = module._buffers[name]
    norm.train(module.training)
    return norm, [getattr(module, name) for name in children]
