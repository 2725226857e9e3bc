"""The profiler: per-call-site activation-state counts and entropy of any model."""

from .callsites import CallSite, call_site_names, trace_call_sites

__all__ = ["CallSite", "call_site_names", "trace_call_sites"]
