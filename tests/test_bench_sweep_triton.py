"""benchmarks/sweep_triton.py runs, so that a GPU session does not lose its sweep to an error in the script.

``--smoke`` runs every setting on small CPU stand-ins of the sweep's tensors through the Triton interpreter and
checks each setting's counts against the torch reference; only the timing (CUDA events and graphs) is left out.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cuda_toolkit import ROOT

pytest.importorskip("triton")


def _sweep(*args: str) -> list[dict[str, str]]:
    """The sweep's rows, each as {column: cell}."""
    # The script imports the package of this checkout, whatever an installed nepenthe points to.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sweep_triton.py"), "--smoke", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    assert header.startswith("| tensor |"), header
    cells = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]  # noqa: E731
    return [dict(zip(cells(header), cells(row), strict=True)) for row in rows]


def test_sweep_runs_every_setting_with_exact_counts():
    # Session 20's first channel-tile sweep on the H200 (benchmarks/gpu-results): 7 tensors (8 since MobileNet-V2's
    # float32 channels_last joined them), 8 settings.
    rows = _sweep("--match", "channels_last", "natural", "--warps", "4", "8", "--per-sm", "4", "8", "--fit", "0", "1")
    assert len(rows) == 8 * 8
    assert all(row["counts"] == "exact" for row in rows), [r for r in rows if r["counts"] != "exact"]
    assert {(row["warps"], row["programs/SM"], row["fitted channel blocks"]) for row in rows} == {
        (w, p, f) for w in "48" for p in "48" for f in "01"
    }


def test_sweep_counts_other_threshold_sets_with_and_without_masks():
    # Session 20's second sweep: the 6 channels_last tensors, masks on and off, own and three thresholds.
    masks = ("--unmasked", "0", "1")
    rows = _sweep("--match", "channels_last", "--fit", "1", *masks, "--thresholds", "own", "0,1,2")
    assert len(rows) == 6 * 2 * 2
    assert [row["unmasked full tiles"] for row in rows[:4]] == ["0", "0", "1", "1"]
    assert [row["thresholds"] for row in rows if "MobileNet" in row["tensor"]][:2] == ["0, 6", "0, 1, 2"]
    assert [row["thresholds"] for row in rows if "layer1" in row["tensor"]][:2] == ["0", "0, 1, 2"]
    assert all(row["counts"] == "exact" for row in rows)


def test_sweep_of_inner_blocks():
    # Session 20's third sweep: the 5 NCHW tensors with inner blocks widest and fitted.
    rows = _sweep("--match", "nchw", "--inner-fit", "0", "1")
    assert len(rows) == 5 * 2
    assert [row["fitted inner blocks"] for row in rows] == ["0", "1"] * 5
    assert all(row["counts"] == "exact" for row in rows)


def test_sweep_of_the_maps_in_l2():
    # --small: seven of bench_kernels' maps that the L2 holds, instead of the large tensors, under two settings.
    rows = _sweep("--small", "--warps", "8", "16", "--per-sm", "2")
    assert len(rows) == 7 * 2
    assert {row["tensor"] for row in rows} == {"ResNet-18 layer4", "MobileNet-V2 last"}
    assert [row["warps"] for row in rows] == ["8", "16"] * 7
    assert all(row["counts"] == "exact" for row in rows)


def test_sweep_of_the_fused_kernel():
    # --fused: the fused ReLU6 on MobileNet-V2's channels_last tensors, channel blocks fitted and widest.
    rows = _sweep("--fused", "--match", "block1 channels_last", "--tiles", "8192", "--warps", "4", "--fit", "0", "1")
    assert len(rows) == 3 * 2
    assert [row["dtype"] for row in rows] == ["float32", "float32", "float16", "float16", "bfloat16", "bfloat16"]
    assert [row["fitted channel blocks"] for row in rows] == ["0", "1"] * 3
    assert all(row["counts"] == "exact" for row in rows), rows


def test_sweep_of_the_fused_kernel_in_place():
    # ReLU6 changes the values above 6: each setting must be checked on the tensor's values, not the last setting's
    # output (session 31's first in-place sweep marked every setting but the first WRONG).
    rows = _sweep("--fused", "--in-place", "--match", "block1 channels_last", "--warps", "8", "16", "--fit", "0", "1")
    assert len(rows) == 3 * 4
    assert all(row["counts"] == "exact" for row in rows), rows
