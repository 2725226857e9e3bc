"""The ``nepenthe`` command line: doctor, prune on digits with tiny settings, report, shrink, bench, errors."""

from __future__ import annotations

import json

import pytest
import torch

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


def test_timm_models_by_name(capsys) -> None:
    """--model timm:NAME builds timm's model for the dataset's images (digits: 1x8x8, 10 classes), named by timm's
    module names; an unknown name, or a model whose patches do not fit the images, is an error before any work."""
    argv = ["profile", "--model", "timm:resnet18", "--dataset", "digits", "--subset", "64", "--batch-size", "32"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "layer1.0.act1" in text and "layer4.1.act2" in text and "17 layers" in text
    assert main(argv[:2] + ["timm:resnet_nosuch"] + argv[3:]) == 2
    assert "timm has no model 'resnet_nosuch'" in capsys.readouterr().err
    assert main(argv[:2] + ["timm:vit_tiny_patch16_224"] + argv[3:]) == 2
    assert "timm:vit_tiny_patch16_224 does not run on 1x8x8 images" in capsys.readouterr().err


def test_a_state_dict_that_cannot_load_is_named_not_raised(tmp_path, capsys) -> None:
    """--checkpoint (profile) and --dense-checkpoint (prune): a missing, corrupt, foreign or misfit file is an error
    naming the file and what is wrong, before any work; a state dict of the same model loads."""
    from nepenthe.orchestrator.models import build_model

    good = tmp_path / "good.pt"
    torch.save(build_model("small_cnn", 10, 1, 0.5, 8).state_dict(), good)
    torch.save(build_model("small_cnn", 10, 1, 1.0, 8).state_dict(), tmp_path / "wider.pt")
    torch.save({"a": torch.zeros(3)}, tmp_path / "other.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({**build_model("small_cnn", 10, 1, 0.5, 8).state_dict(), "features.0.weight": 3}, tmp_path / "int.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:300])
    profile = ["profile", "--model", "small_cnn", "--width", "0.5", "--dataset", "digits", "--subset", "32"]
    cases = {
        "missing.pt": "does not exist",
        "garbage.pt": "is not a state dict",
        "module.pt": "is not a state dict",
        "cut.pt": "is corrupt",
        "tensor.pt": "holds a Tensor, not a state dict",
        "int.pt": "does not fit the small_cnn model (width 0.5): Error(s) in loading state_dict for",
        "other.pt": "does not fit the small_cnn model (width 0.5): 20 of its 20 entries missing",
        "wider.pt": "of other shapes (features.0.weight (16, 1, 3, 3) for (8, 1, 3, 3)",
    }
    for name, message in cases.items():
        assert main([*profile, "--checkpoint", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert f"{tmp_path / name}" in err and message in err, (name, err)
    assert (
        "1 unexpected (a)" in (main([*profile, "--checkpoint", str(tmp_path / "other.pt")]), capsys.readouterr())[1].err
    )
    assert main([*profile, "--checkpoint", str(good)]) == 0
    argv = ["prune", "--model", "small_cnn", "--width", "0.5", "--dataset", "digits", "--out", str(tmp_path / "run"),
            "--no-progress", "--dense-checkpoint", str(tmp_path / "wider.pt")]  # fmt: skip
    assert main(argv) == 2
    assert "does not fit the small_cnn model (width 0.5)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
