"""The NEPENTHE loop end to end on scikit-learn digits with a tiny residual CNN: layers removed, resume after a
kill gives the same result, checkpoints refused when corrupt or mismatched, reports and plots written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

import nepenthe
from nepenthe.orchestrator import CheckpointError, NepentheConfig, load_dataset, run_nepenthe
from nepenthe.orchestrator import loop as loop_module
from nepenthe.orchestrator.checkpoint import list_checkpoints, load_checkpoint
from nepenthe.orchestrator.report import read_report, rebuild_plots, summary_table

# Tiny models: extra threads only add synchronisation cost (and the runs compared must use the same count).
pytestmark = pytest.mark.usefixtures("one_thread")


class TinyResNet(nn.Module):
    """Stem conv-BN-ReLU, two torchvision BasicBlocks, pool, linear: 5 activation call sites."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(channels, channels), BasicBlock(channels, channels))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer1(self.relu(self.bn1(self.conv1(x))))).flatten(1))


# A configuration where iteration 1 prunes layer1.1.conv2 away entirely (its share is capped), so the block's
# output ReLU sees a constant-plus-skip... and iteration 2 finds a zero-entropy call site and linearizes it.
SEED = 1


def _config(out: Path, **overrides: object) -> NepentheConfig:
    values = dict(
        zeta=0.5, delta=10.0, max_iterations=2, finetune_epochs=3, dense_epochs=10, lr=0.05, batch_size=64,
        seed=SEED, out_dir=str(out), progress=False, finalize_linearize=False, latency_repeats=3,
    )  # fmt: skip
    values.update(overrides)
    return NepentheConfig(**values)


def _model() -> nn.Module:
    torch.manual_seed(SEED)
    return TinyResNet()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("full")
    result = run_nepenthe(_model(), digits.train, digits.test, _config(out))
    return out, result


def test_loop_removes_a_layer_and_shrinks(full_run) -> None:
    out, result = full_run
    assert result.total_layers == 5
    assert len(result.removed) >= 1
    assert result.dense_accuracy - result.final_accuracy <= 10.0
    history = result.history
    assert [r["iteration"] for r in history] == [0, 1, 2]
    assert history[1]["sparsity"] == pytest.approx(0.5, abs=1e-3)  # zeta of the prunable weights, first iteration
    assert history[-1]["removed_total"] == len(result.removed)
    # every removed layer was at zero entropy when it was linearized
    for record in history:
        for name in record["linearized"]:
            assert record["layer_entropy"][name] == 0.0
    # the shrunk model computes what the kept model computes
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(result.shrunk(x), result.model.eval()(x), rtol=1e-4, atol=1e-4)


def test_report_and_plots_parse(full_run) -> None:
    out, result = full_run
    report = read_report(out)
    assert report["removed"] == result.removed
    assert report["dense_accuracy"] == pytest.approx(result.dense_accuracy)
    assert len(report["iterations"]) == 3 and report["config"]["zeta"] == 0.5
    assert report["shrink"]["before"]["conv_linear"] >= report["shrink"]["after"]["conv_linear"]
    assert set(report["latency"]) >= {"dense_ms", "kept_ms", "shrunk_ms"}
    json.dumps(report, allow_nan=False)
    for png in rebuild_plots(out):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{len(result.removed)} of 5" in summary_table(report)


def test_resume_after_kill_gives_the_same_result(full_run, digits, tmp_path, monkeypatch) -> None:
    _, reference = full_run
    out = tmp_path / "killed"
    real_train = loop_module.train

    def killed_in_iteration_2(*args, **kwargs):
        if kwargs.get("phase") == 2:
            raise KeyboardInterrupt  # a kill in the middle of iteration 2, after profiling and pruning
        return real_train(*args, **kwargs)

    monkeypatch.setattr(loop_module, "train", killed_in_iteration_2)
    with pytest.raises(KeyboardInterrupt):
        run_nepenthe(_model(), digits.train, digits.test, _config(out))
    monkeypatch.setattr(loop_module, "train", real_train)
    assert sorted(list_checkpoints(out / "checkpoints")) == [0, 1]
    (out / "checkpoints" / "iter_0002.pt.tmp").write_bytes(b"half a file")  # a kill during a checkpoint write
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        run_nepenthe(_model(), digits.train, digits.test, _config(out))
    resumed = run_nepenthe(_model(), digits.train, digits.test, _config(out), resume=True)
    assert resumed.removed == reference.removed
    assert [r["accuracy"] for r in resumed.history] == [r["accuracy"] for r in reference.history]
    ref_state, got_state = reference.model.state_dict(), resumed.model.state_dict()
    assert ref_state.keys() == got_state.keys()
    for key in ref_state:
        assert torch.equal(ref_state[key], got_state[key]), key


def test_corrupt_or_mismatched_checkpoint_is_refused(full_run, digits, tmp_path) -> None:
    source, _ = full_run
    out = tmp_path / "copy"
    shutil.copytree(source / "checkpoints", out / "checkpoints")
    with pytest.raises(CheckpointError, match=r"different configuration.*zeta"):
        run_nepenthe(_model(), digits.train, digits.test, _config(out, zeta=0.3), resume=True)
    with pytest.raises(CheckpointError, match="different model"):
        run_nepenthe(TinyResNet(channels=4), digits.train, digits.test, _config(out), resume=True)
    last = out / "checkpoints" / "iter_0002.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"iter_0002\.pt is corrupt"):
        run_nepenthe(_model(), digits.train, digits.test, _config(out), resume=True)
    torch.save({"something": "else"}, last)
    with pytest.raises(CheckpointError, match="not a nepenthe checkpoint"):
        load_checkpoint(last)


def test_config_presets_and_errors() -> None:
    paper = NepentheConfig.from_preset("paper")
    assert (paper.zeta, paper.lr, paper.momentum, paper.weight_decay, paper.batch_size) == (0.5, 0.1, 0.9, 1e-4, 128)
    assert paper.finetune_epochs == 160 and paper.schedule == "step"
    assert NepentheConfig.from_dict(paper.to_dict()) == paper
    assert NepentheConfig.from_preset("paper", zeta=0.25).zeta == 0.25
    with pytest.raises(ValueError, match="preset must be one of"):
        NepentheConfig.from_preset("fast")
    with pytest.raises(ValueError, match="zeta"):
        NepentheConfig(zeta=1.5)
    with pytest.raises(ValueError, match="optimizer"):
        NepentheConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="unknown NepentheConfig fields"):
        NepentheConfig.from_dict({"zetta": 0.1})
    assert NepentheConfig(device="cuda").fingerprint() == NepentheConfig().fingerprint()


def test_library_api_is_exported() -> None:
    assert nepenthe.run_nepenthe is run_nepenthe and nepenthe.NepentheConfig is NepentheConfig


class WeightStandardizedCNN(nn.Module):
    """Its conv computes its weight in its forward (weight standardization, as timm's StdConv2d): a function call
    that pruning masks cannot reach, so no module feeds the ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 1, 3, 3))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / self.weight.std((1, 2, 3), keepdim=True)
        return self.fc(self.relu(torch.nn.functional.conv2d(x, w)).mean((2, 3)))


def test_a_model_with_nothing_to_prune_is_refused_before_any_training(digits, tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"no conv or linear layer of WeightStandardizedCNN feeds any of its 1 "):
        run_nepenthe(WeightStandardizedCNN(), digits.train, digits.test, _config(out))
    assert not (out / "checkpoints").exists()
