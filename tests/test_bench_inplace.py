"""benchmarks/bench_inplace.py runs and prints its table: both ways and torch's op alone timed, and which way
fused_activation_ takes."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch
from cuda_toolkit import ROOT

from nepenthe.kernels import available_backends, cpu_backend, cuda_backend, triton_backend

ROW = re.compile(
    r"^\| (\w+) \| small \| ReLU6 \| \(2, 16, 14, 14\) \| (\w+) \| (\w+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) "
    r"\| ([0-9.]+) \| ([0-9.]+) \| ([0-9]+) \| ([a-z +]+) \|$",
    re.MULTILINE,
)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_inplace", ROOT / "benchmarks" / "bench_inplace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(out: str) -> list[tuple[str, ...]]:
    rows = ROW.findall(out)
    assert rows, out
    for row in rows:
        assert all(float(t) > 0 for t in row[3:6]), out  # the three times
        assert float(row[6]) == pytest.approx(float(row[4]) / float(row[3]), rel=0.05, abs=0.011), out
        assert float(row[7]) == pytest.approx(float(row[4]) / float(row[5]), rel=0.05, abs=0.011), out
    return rows


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the cpu extension did not load")
def test_bench_inplace_prints_both_ways_and_the_choice(capsys):
    chosen = cpu_backend.fused_in_place
    _bench().main(["--quick", "--rounds", "3", "--dtypes", "fp32", "bf16"])
    assert cpu_backend.fused_in_place is chosen  # put back
    rows = _rows(capsys.readouterr().out)
    assert [(b, layout, dtype) for b, layout, dtype, *_ in rows] == [
        ("cpu", "nchw", "fp32"), ("cpu", "channels_last", "fp32"), ("cpu", "nchw", "bf16"),
        ("cpu", "channels_last", "bf16"),
    ]  # fmt: skip
    assert [takes for *_, takes in rows] == ["one pass"] * 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_bench_inplace_on_cuda_times_each_gpu_backend(capsys):
    backends = [b for b in ("cuda", "triton") if b in available_backends("cuda")]
    chosen = {m: m.fused_in_place for m in (cuda_backend, triton_backend)}
    _bench().main(["--device", "cuda", "--quick", "--rounds", "2", "--reps", "2", "--dtypes", "fp16"])
    assert all(m.fused_in_place is f for m, f in chosen.items())
    rows = _rows(capsys.readouterr().out)
    assert [(b, layout) for b, layout, *_ in rows] == [(b, lay) for b in backends for lay in ("nchw", "channels_last")]
    assert all(takes == "one pass" for *_, takes in rows)
