"""``ShrinkReport``: what ``shrink`` removed and merged, what it kept and why, and what it bought (measured)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..activations import activation_spec
from .affine import ChannelAffine
from .rewrite import Decision


def graph_layer_counts(gm: fx.GraphModule) -> dict[str, int]:
    """Conv/linear, activation and affine call nodes of a traced model, and its depth in conv/linear layers."""
    counts = {"conv_linear": 0, "activations": 0, "affine_maps": 0}
    depth: dict[fx.Node, int] = {}
    for n in gm.graph.nodes:
        m = gm.get_submodule(n.target) if n.op == "call_module" else None
        is_layer = isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        counts["conv_linear"] += is_layer
        counts["activations"] += m is not None and activation_spec(m) is not None
        counts["affine_maps"] += isinstance(m, ChannelAffine)
        depth[n] = max((depth[a] for a in n.all_input_nodes), default=0) + int(is_layer)
    counts["depth"] = max(depth.values(), default=0)
    return counts


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``x`` (torch's FlopCounterMode: 2 per multiply-accumulate)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


@dataclass
class ShrinkReport:
    """Result of :func:`nepenthe.shrink`. ``print(report)`` gives a table; ``to_dict()`` gives JSON-ready data.

    ``before`` / ``after`` hold layer counts (``conv_linear``, ``activations``, ``affine_maps``, ``depth``: the
    most conv/linear layers on one path), ``params`` and ``flops`` (one sample). ``latency_ms`` maps
    ``"before"`` (the linearized model), ``"identity_only"`` (the papers' replacement of the linearized
    activations by identities, nothing merged) and ``"shrunk"`` to ``{batch: median ms}``.
    """

    linearized_sites: list[str]
    before: dict[str, int]
    after: dict[str, int]
    merges: list[Decision]
    skipped: list[Decision]
    site_outcomes: dict[str, str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    max_rel_diff: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, dict[int, float]] = field(default_factory=dict)
    device: str = "cpu"
    plan: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latency_ms"] = {k: {str(b): v for b, v in t.items()} for k, t in self.latency_ms.items()}
        return d

    def speedup(self, batch: int, baseline: str = "identity_only") -> float | None:
        """``latency[baseline] / latency['shrunk']`` at ``batch`` (None when not measured)."""
        try:
            return self.latency_ms[baseline][batch] / self.latency_ms["shrunk"][batch]
        except KeyError:
            return None

    def __str__(self) -> str:
        rows = [("", "before", "after")]
        for key, label in (
            ("activations", "activation layers (nonlinear)"),
            ("affine_maps", "per-channel affine maps"),
            ("conv_linear", "conv/linear layers"),
            ("depth", "depth (conv/linear on longest path)"),
            ("params", "parameters"),
            ("flops", "FLOPs (1 sample)"),
        ):
            rows.append((label, f"{self.before.get(key, 0):,}", f"{self.after.get(key, 0):,}"))
        for name, t in self.latency_ms.items():
            for batch, ms in sorted(t.items()):
                rows.append((f"latency {name}, batch {batch} ({self.device})", f"{ms:.2f} ms", ""))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"shrink: {len(self.linearized_sites)} linearized call site(s)"]
        lines += [f"  {r[0].ljust(w0)}  {r[1].rjust(w1)}  {r[2]}" for r in rows]
        for batch in sorted(self.latency_ms.get("shrunk", {})):
            s = self.speedup(batch)
            if s is not None:
                lines.append(f"  speed-up over identity-only at batch {batch}: {s:.2f}x")
        for dtype, v in self.max_rel_diff.items():
            lines.append(f"  max output difference ({dtype}): abs {self.max_abs_diff[dtype]:.2e}, relative {v:.2e}")
        merges = [d for d in self.merges if d.what.startswith("merge")]
        lines.append(f"merges done ({len(merges)}), folds/drops ({len(self.merges) - len(merges)}):")
        lines += [f"  {d.what}" for d in merges]
        if self.skipped:
            lines.append(f"left unmerged ({len(self.skipped)}):")
            lines += [f"  {d.what}: {d.reason}" for d in self.skipped]
        if self.site_outcomes:
            lines.append("linearized call sites:")
            lines += [f"  {k}: {v}" for k, v in self.site_outcomes.items()]
        return "\n".join(lines)
