"""The CPU kernels count exactly when OpenMP gives a region fewer threads than asked for.

The per-thread count tables are cleared by their own threads inside the region, and summed over the threads the
region really has. A nested region, ``OMP_THREAD_LIMIT`` or ``OMP_DYNAMIC`` can give fewer threads than
``torch.get_num_threads()``: tables of threads that never ran must not be summed. A child process with
``OMP_THREAD_LIMIT=1`` asks for four threads and counts each shape three times, so later calls get memory that
earlier tables left non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nepenthe.kernels import available_backends

_ROOT = Path(__file__).resolve().parents[1]

# One tensor per path that keeps per-thread tables: NCHW 7x7 bitmaps, NCHW rows, channels_last channel vectors.
_CHILD = """
import json, torch
from nepenthe.kernels import count_states
from nepenthe.kernels.reference import count_states_reference
torch.set_num_threads(4)
torch.manual_seed(0)
results = []
for shape, channels_last, thresholds in [
    ((32, 512, 7, 7), False, (0.0, 1.0)),
    ((8, 64, 56, 56), False, (0.0,)),
    ((32, 512, 7, 7), True, (0.0,)),
    ((16, 96, 28, 28), True, (-0.5, 0.0, 1.0)),
]:
    for _ in range(3):
        x = torch.randn(shape)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        got = count_states(x, thresholds, backend="cpu")
        want = count_states_reference(x, thresholds, 1, False)
        results.append([list(shape), channels_last, bool(torch.equal(got, want))])
print(json.dumps({"threads": torch.get_num_threads(), "results": results}))
"""


def test_counts_exact_when_the_region_has_fewer_threads_than_asked():
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend did not load here (`nepenthe doctor` says why)")
    path = os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_THREAD_LIMIT": "1", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, cwd=_ROOT, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["threads"] == 4, "torch should still ask the kernels for four threads"
    wrong = [r for r in out["results"] if not r[2]]
    assert not wrong, f"counts differ from the reference for {wrong}"
