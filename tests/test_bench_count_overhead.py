"""benchmarks/count_overhead.py runs and prints its tables: every call and piece timed, as positive numbers."""

from __future__ import annotations

import importlib.util
import re

import pytest
from cuda_toolkit import ROOT

from nepenthe.kernels import available_backends


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the cpu extension did not load")
def test_count_overhead_prints_every_call_and_piece(capsys):
    spec = importlib.util.spec_from_file_location("count_overhead", ROOT / "benchmarks" / "count_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--shape", "2", "64", "7", "7", "--thresholds", "0", "6", "--channels-last", "--rounds", "3"])
    out = capsys.readouterr().out
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| ([^|]+) \| ([0-9.]+) \|", out, re.MULTILINE)}
    for name in ("x.sum()", "extension call alone", "count_states, new counts", "count_states, counts given"):
        assert float(rows[name]) > 0, out
    for name in ("plan lookup", "torch.empty counts", "job_args"):
        assert float(rows[name]) > 0, out
    assert "(2, 64, 7, 7) channels_last, thresholds (0.0, 6.0)" in out
