"""PNG plots of a run report (matplotlib, Agg backend): entropy heat map, accuracy and removed layers, latency."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _layer_order(iterations: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for record in iterations:
        for name in record.get("layer_entropy") or {}:
            if name not in names:
                names.append(name)
    return names


def entropy_heatmap(report: dict[str, Any], path: Path) -> Path:
    """Layer entropy (rows: activation layers in call order; columns: iterations); grey where removed."""
    iterations = [r for r in report["iterations"] if r.get("layer_entropy")]
    names = _layer_order(iterations)
    grid = np.full((max(1, len(names)), max(1, len(iterations))), np.nan)
    for j, record in enumerate(iterations):
        for i, name in enumerate(names):
            value = record["layer_entropy"].get(name)
            if value is not None:
                grid[i, j] = value
    fig, ax = plt.subplots(figsize=(max(5.5, 3.0 + 0.5 * grid.shape[1]), 1.8 + 0.28 * grid.shape[0]))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0.0)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xticks(range(len(iterations)), [str(r["iteration"]) for r in iterations])
    ax.set_xlabel("iteration (entropy measured before pruning)")
    ax.set_title("layer entropy (bits); grey: removed")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def accuracy_plot(report: dict[str, Any], path: Path) -> Path:
    """Test accuracy per iteration with the dense accuracy and the delta band, and removed layers per iteration."""
    its = report["iterations"]
    x = [r["iteration"] for r in its]
    acc = [r["accuracy"] if r["accuracy"] is not None else math.nan for r in its]
    removed = [r.get("removed_total", 0) for r in its]
    dense = report["dense_accuracy"]
    delta = (report.get("config") or {}).get("delta", 0.0)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(x, acc, "o-", color="tab:blue", label="accuracy")
    ax.axhline(dense, color="tab:blue", ls="--", lw=1, label="dense")
    ax.axhspan(dense - delta, dense, color="tab:blue", alpha=0.1, label=f"within delta={delta}")
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    twin = ax.twinx()
    twin.step(x, removed, where="mid", color="tab:red", label="layers removed")
    twin.set_ylabel("activation layers removed", color="tab:red")
    twin.set_ylim(0, max(1, report.get("total_layers") or 1))
    lines = ax.get_legend_handles_labels()
    other = twin.get_legend_handles_labels()
    ax.legend(lines[0] + other[0], lines[1] + other[1], loc="lower left", fontsize=8)
    ax.set_title("accuracy and removed layers per iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latency_plot(report: dict[str, Any], path: Path) -> Path | None:
    """Measured latency of the dense, kept (linearized) and shrunk models; None when not measured."""
    latency = report.get("latency") or {}
    keys = [("dense_ms", "dense"), ("dense_folded_ms", "dense, BN folded"), ("kept_ms", "kept (linearized)"),
            ("shrunk_ms", "shrunk")]  # fmt: skip
    values = [(label, latency[k]) for k, label in keys if latency.get(k) is not None]
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    colors = ["tab:grey", "tab:blue", "tab:orange", "tab:green"][: len(values)]
    ax.bar([v[0] for v in values], [v[1] for v in values], color=colors)
    ax.set_ylabel("ms per forward pass")
    ax.set_title(f"latency, batch {latency.get('batch', 1)} on {latency.get('device', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_plots(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """All plots of ``report`` into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [entropy_heatmap(report, out / "layer_entropy.png"), accuracy_plot(report, out / "accuracy.png")]
    lat = latency_plot(report, out / "latency.png")
    if lat is not None:
        written.append(lat)
    return written
