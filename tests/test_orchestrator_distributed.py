"""The loop under torchrun with 2 CPU processes (gloo): counts are summed over ranks, only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from nepenthe.orchestrator.checkpoint import load_checkpoint
from nepenthe.orchestrator.data import load_dataset


def test_two_process_run_sums_counts_over_ranks(tmp_path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "nepenthe", "prune", "--model", "small_cnn", "--width", "0.5", "--dataset", "digits",
        "--dense-epochs", "1", "--iterations", "1", "--finetune-epochs", "1", "--zeta", "0.3", "--delta", "50",
        "--train-subset", "301", "--test-subset", "101", "--latency-repeats", "1", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("dense accuracy") == 1  # the final table comes from rank 0 only
    report = json.loads((out / "report.json").read_text())
    assert [r["iteration"] for r in report["iterations"]] == [0, 1]
    # Each rank profiled its own half of the 301 training images (151 + 150); after the all-reduce every
    # neuron of every layer has seen all 301 images x 8 x 8 positions, exactly once.
    profile = load_checkpoint(out / "checkpoints" / "iter_0001.pt")["profile"]
    assert len(load_dataset("digits").train) > 301
    for name, layer in profile["layers"].items():
        counts = layer["counts"]
        assert torch.equal(counts.sum(dim=1), torch.full((counts.shape[0],), 301 * 64)), name
    # accuracy is summed over ranks too: a multiple of 1/101
    accuracy = report["iterations"][1]["accuracy"]
    assert abs(accuracy * 101 / 100 - round(accuracy * 101 / 100)) < 1e-6
