"""The ``nepenthe`` command line: doctor, prune on digits with tiny settings, report, shrink, bench, errors."""

from __future__ import annotations

import json

import pytest

from nepenthe.cli import build_parser, main

# Tiny models: extra threads only add synchronisation cost (and the runs compared must use the same count).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = [
        "prune", "--model", "small_cnn", "--dataset", "digits", "--dense-epochs", "2", "--iterations", "1",
        "--finetune-epochs", "1", "--zeta", "0.3", "--delta", "50", "--batch-size", "128", "--out", str(out),
        "--train-subset", "400", "--test-subset", "200", "--latency-repeats", "2", "--width", "0.5", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_doctor_lists_backends(capsys) -> None:
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "counting backends:" in text and "torch" in text and "CUDA available" in text


def test_prune_writes_report_and_report_redraws(cli_run, capsys) -> None:
    report = json.loads((cli_run / "report.json").read_text())
    assert report["extra"]["model"] == "small_cnn" and report["config"]["zeta"] == 0.3
    assert [r["iteration"] for r in report["iterations"]] == [0, 1]
    assert (cli_run / "kept_model.pt").is_file() and (cli_run / "checkpoints" / "iter_0001.pt").is_file()
    for png in (cli_run / "plots").glob("*.png"):
        png.unlink()
    assert main(["report", str(cli_run)]) == 0
    assert "dense accuracy" in capsys.readouterr().out
    assert {p.name for p in (cli_run / "plots").glob("*.png")} >= {"layer_entropy.png", "accuracy.png"}


def test_shrink_and_bench_from_a_run_dir(cli_run, capsys) -> None:
    assert main(["shrink", str(cli_run), "--latency-repeats", "1"]) == 0
    assert "conv/linear layers" in capsys.readouterr().out
    assert main(["bench", str(cli_run), "--batch-sizes", "1", "--repeats", "3"]) == 0
    assert "vs dense" in capsys.readouterr().out


def test_prune_refuses_an_existing_run_without_resume(cli_run, capsys) -> None:
    argv = ["prune", "--model", "small_cnn", "--dataset", "digits", "--out", str(cli_run), "--no-progress"]
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err


def test_errors_are_reported_not_raised(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no run report" in capsys.readouterr().err
    assert main(["prune", "--dataset", "cifar10", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "needs a root folder" in capsys.readouterr().err
    assert main(["prune", "--model", "resnet50", "--dataset", "digits", "--out", str(tmp_path / "y")]) == 2
    assert "model must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--dataset", "mnist"])


def test_paper_preset_from_the_command_line() -> None:
    from nepenthe.cli import _config_from_args

    args = build_parser().parse_args(["prune", "--preset", "paper", "--zeta", "0.25"])
    cfg = _config_from_args(args)
    assert (cfg.preset, cfg.zeta, cfg.finetune_epochs, cfg.lr) == ("paper", 0.25, 160, 0.1)


def test_profile_prints_the_entropy_table(capsys) -> None:
    argv = ["profile", "--model", "small_cnn", "--dataset", "digits", "--subset", "64", "--batch-size", "32"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "features.2" in text and "features.8" in text  # the three ReLU layers of the small CNN
