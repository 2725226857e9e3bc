"""The surgeon: linearize activation call sites, fold and merge the layers around them, save the plan."""

from .affine import CallSiteDispatch, ChannelAffine
from .algebra import BorderBiasConv2d
from .linearize import LinearizeReport, linearize
from .plan import apply_plan, load_plan, save_plan
from .report import ShrinkReport
from .shrink import shrink

__all__ = [
    "BorderBiasConv2d",
    "CallSiteDispatch",
    "ChannelAffine",
    "LinearizeReport",
    "ShrinkReport",
    "apply_plan",
    "linearize",
    "load_plan",
    "save_plan",
    "shrink",
]
