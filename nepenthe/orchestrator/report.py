"""The run report: one JSON file per run, the plots drawn from it, and a readable summary table."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

REPORT_NAME = "report.json"


def _clean(value: Any) -> Any:
    """JSON-safe values: NaN and infinities become None, tensors and tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``report`` as ``out_dir/report.json`` (atomically) and draw its plots under ``out_dir/plots``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(report), indent=2, allow_nan=False))
    os.replace(tmp, path)
    from .plots import draw_plots  # matplotlib is imported only when plots are drawn

    draw_plots(read_report(out), out / "plots")
    return path


def read_report(run_dir: str | Path) -> dict[str, Any]:
    """The report of the run in ``run_dir`` (a clear error when it is missing or not a report)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / REPORT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no run report at {path}; run `nepenthe prune` with this out dir first")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(report, dict) or "iterations" not in report:
        raise ValueError(f"{path} is not a nepenthe run report (no 'iterations' field)")
    return report


def rebuild_plots(run_dir: str | Path) -> list[Path]:
    """Draw the plots of ``run_dir`` again from its ``report.json`` (what ``nepenthe report`` does)."""
    from .plots import draw_plots

    return draw_plots(read_report(run_dir), Path(run_dir) / "plots")


def _count(value: Any) -> Any:
    return len(value) if isinstance(value, list) else value


def summary_table(report: dict[str, Any]) -> str:
    """The final table: accuracy, layers removed and merged, parameters, latency before and after."""
    shrink = report.get("shrink") or {}
    latency = report.get("latency") or {}
    rows = [
        ("dense accuracy", f"{report['dense_accuracy']:.2f}%"),
        ("final accuracy", f"{report['final_accuracy']:.2f}%"),
        ("accuracy drop", f"{report['dense_accuracy'] - report['final_accuracy']:+.2f} points"),
        ("activation layers removed", f"{len(report['removed'])} of {report['total_layers']}"),
    ]
    merges = [m for m in shrink.get("merges") or [] if str(m.get("what", "")).startswith("merge")]
    if shrink:
        rows.append(("layers merged", str(len(merges))))
    before, after = shrink.get("before") or {}, shrink.get("after") or {}
    for key, label in (("conv_linear", "conv/linear layers"), ("depth", "depth (longest conv/linear path)"),
                       ("params", "parameters"), ("flops", "FLOPs per sample")):  # fmt: skip
        if key in before and key in after:
            rows.append((label, f"{before[key]:,} -> {after[key]:,}"))
    nonzero = report.get("nonzero_parameters") or {}
    if nonzero:
        rows.append(("nonzero parameters", f"{nonzero['dense']:,} -> {nonzero['shrunk']:,}"))
    last = report["iterations"][-1] if report["iterations"] else {}
    kept = next((r for r in report["iterations"] if r["iteration"] == report.get("kept_iteration")), last)
    if kept:
        rows.append(("weight sparsity (pruned layers)", f"{100 * (kept.get('sparsity') or 0.0):.1f}%"))
    if latency:
        rows.append(
            (
                f"latency, batch {latency.get('batch', 1)} ({latency.get('device', '?')})",
                f"dense {latency['dense_ms']:.2f} ms -> shrunk {latency['shrunk_ms']:.2f} ms "
                f"({latency['dense_ms'] / latency['shrunk_ms']:.2f}x)",
            )
        )
        rows.append(("latency, kept model before merging", f"{latency['kept_ms']:.2f} ms"))
        if latency.get("dense_folded_ms") is not None:
            rows.append(("latency, dense with BatchNorm folded", f"{latency['dense_folded_ms']:.2f} ms"))
        if latency.get("shrunk_accuracy") is not None:
            rows.append(("shrunk model accuracy", f"{latency['shrunk_accuracy']:.2f}%"))
    rows.append(("stopped because", str(report.get("stop_reason"))))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
