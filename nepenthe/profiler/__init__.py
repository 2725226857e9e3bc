"""The profiler: per-call-site activation-state counts and entropy of any model."""

from .callsites import CallSite, call_site_names, trace_call_sites
from .functional import prepare
from .profiling import LayerInfo, Profile, profile

__all__ = ["CallSite", "LayerInfo", "Profile", "call_site_names", "prepare", "profile", "trace_call_sites"]
