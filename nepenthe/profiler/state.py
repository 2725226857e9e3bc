"""Profile state dicts: the format tag, and the checks that refuse results from another model or settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .profiling import Profile

STATE_FORMAT = "nepenthe.profile/1"


def check_state(state: Mapping, prof: Profile) -> None:
    """Refuse a state dict that does not come from a profile of the same model with the same settings."""
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"not a nepenthe profile state dict (expected format {STATE_FORMAT!r})")
    theirs, ours = [tuple(x) for x in state["model"]], prof._fingerprint()
    if theirs != ours:
        diff = next(((a, b) for a, b in zip(theirs, ours, strict=False) if a != b), None)
        raise ValueError(
            "state dict comes from a different model: it has "
            f"{len(theirs)} tracked activation modules, this model {len(ours)}"
            + (f"; first difference: {diff[0]} vs {diff[1]}" if diff else "")
        )
    for key in ("ignore_ties", "aggregate"):
        if state[key] != getattr(prof, key):
            raise ValueError(f"state dict was made with {key}={state[key]!r}, this profile has {getattr(prof, key)!r}")
    calls: dict[str, int] = {}
    for name, entry in state["layers"].items():
        module_name, index = entry["module_name"], int(entry["call_index"])
        calls[module_name] = max(calls.get(module_name, 0), index + 1)
        if name != module_name and name != f"{module_name}@{index}":
            raise ValueError(f"state dict layer {name!r} does not match its module {module_name!r}")
    for name, entry in state["layers"].items():
        module_name, index = entry["module_name"], int(entry["call_index"])
        module = prof._modules[module_name]
        expected = prof._selection.thresholds(module)
        if tuple(entry["thresholds"]) != expected:
            raise ValueError(
                f"state dict layer {name!r} has thresholds {tuple(entry['thresholds'])}, this model {expected}"
            )
        ours_calls = prof._max_calls.get(module_name)
        if ours_calls is not None and max(ours_calls, calls[module_name]) > 1 and ours_calls != calls[module_name]:
            raise ValueError(
                f"state dict calls {module_name!r} {calls[module_name]} time(s) per forward, this model {ours_calls}"
            )
        site = prof._sites.get((module_name, index))
        if site is not None:
            if tuple(entry["counts"].shape) != tuple(site.counts.shape) or entry["channel_dim"] != site.channel_dim:
                raise ValueError(
                    f"state dict layer {name!r} has counts {tuple(entry['counts'].shape)} on dim "
                    f"{entry['channel_dim']}, this profile {tuple(site.counts.shape)} on dim {site.channel_dim}"
                )
    for module_name, n in calls.items():
        prof._max_calls[module_name] = max(prof._max_calls.get(module_name, 0), n)
