"""benchmarks/bench_inplace.py runs and prints its table: both ways timed, and which one fused_activation_ takes."""

from __future__ import annotations

import importlib.util
import re

import pytest
from cuda_toolkit import ROOT

from nepenthe.kernels import available_backends, cpu_backend


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the cpu extension did not load")
def test_bench_inplace_prints_both_ways_and_the_choice(capsys):
    spec = importlib.util.spec_from_file_location("bench_inplace", ROOT / "benchmarks" / "bench_inplace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    chosen = cpu_backend.fused_in_place
    module.main(["--quick", "--rounds", "3", "--dtypes", "fp32", "bf16"])
    assert cpu_backend.fused_in_place is chosen  # put back
    out = capsys.readouterr().out
    rows = re.findall(r"^\| small \| ReLU6 \| \(2, 16, 14, 14\) \| (\w+) \| (\w+) \| ([0-9.]+) \| ([0-9.]+) "
                      r"\| ([0-9.]+) \| ([a-z +]+) \|$", out, re.MULTILINE)  # fmt: skip
    assert [(layout, dtype) for layout, dtype, *_ in rows] == [
        ("nchw", "fp32"), ("channels_last", "fp32"), ("nchw", "bf16"), ("channels_last", "bf16")
    ], out  # fmt: skip
    assert all(float(a) > 0 and float(b) > 0 for _, _, a, b, _, _ in rows), out
    assert [takes for *_, takes in rows] == ["one pass", "count + torch", "one pass", "one pass"], out
