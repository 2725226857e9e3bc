"""The ``nepenthe`` command line: profile, prune (the NEPENTHE loop), shrink, bench, doctor, report, demo.

Examples::

    nepenthe demo                                   # ResNet-18 on Fashion-MNIST, end to end, with the final table
    nepenthe prune --model resnet18 --dataset fashion_mnist --width 0.25 --out runs/r18
    nepenthe prune --out runs/r18 --resume ...      # continue after an interruption (same settings)
    nepenthe prune --preset paper --dataset cifar10 --data-root ~/data ...
    nepenthe report runs/r18                        # redraw the plots from report.json and print the table
    torchrun --nproc_per_node 2 -m nepenthe prune ...   # DDP (gloo on CPU, nccl on GPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

_CONFIG_FLAGS = {
    # flag -> NepentheConfig field (None: taken from the preset)
    "zeta": float,
    "delta": float,
    "max_iterations": int,
    "finetune_epochs": int,
    "dense_epochs": int,
    "optimizer": str,
    "lr": float,
    "dense_lr": float,
    "momentum": float,
    "weight_decay": float,
    "schedule": str,
    "batch_size": int,
    "eval_batch_size": int,
    "seed": int,
    "device": str,
    "train_subset": int,
    "test_subset": int,
    "profile_subset": int,
    "layer_reduction": str,
    "magnitude": str,
    "num_workers": int,
    "latency_repeats": int,
}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .orchestrator.data import DATASETS

    # Model names are checked by build_model: importing them here would import torchvision for every command.
    p.add_argument(
        "--model",
        default="resnet18",
        help="resnet18, mobilenet_v2, vgg16_bn, swin_t, small_cnn, or timm:NAME (a timm model, timm installed)",
    )
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (resnet18, mobilenet_v2, small_cnn)")
    p.add_argument("--dataset", default="fashion_mnist", choices=DATASETS, help="dataset (default fashion_mnist)")
    p.add_argument("--data-root", default=None, help="folder of the dataset (cifar10, imagefolder; fashion_mnist)")
    p.add_argument("--image-size", type=int, default=32, help="image size for imagefolder (default 32)")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", help="config preset: default (short schedule) or paper")
    for name, kind in _CONFIG_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    p.add_argument("--iterations", dest="max_iterations", type=int, default=None, help="alias of --max-iterations")
    p.add_argument("--ignore-ties", action="store_true", default=None, help="leave values at a knee uncounted")
    p.add_argument("--no-final-linearize", dest="finalize_linearize", action="store_false", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--out", dest="out_dir", default=None, help="run directory (default runs/nepenthe)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; 1 on a busy machine)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nepenthe`` (all subcommands)."""
    parser = argparse.ArgumentParser(prog="nepenthe", description="Entropy-based depth reduction (NEPENTHE).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="print the per-layer activation entropy of a model on a dataset")
    _add_model_args(p)
    p.add_argument("--checkpoint", default=None, help="state dict of the model (default: freshly initialised)")
    p.add_argument("--subset", type=int, default=2000, help="training samples to profile (default 2000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--ignore-ties", action="store_true")
    p.add_argument("--fused", action="store_true", help="count with the fused activation kernels")

    p = sub.add_parser("prune", help="run the NEPENTHE loop (train, profile, linearize, prune, fine-tune, shrink)")
    _add_model_args(p)
    _add_config_args(p)
    p.add_argument("--dense-checkpoint", default=None, help="state dict of a trained dense model (skips training)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")

    p = sub.add_parser("demo", help="the README demo: ResNet-18 (width 0.125) on Fashion-MNIST, end to end")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true")

    p = sub.add_parser("shrink", help="shrink the kept model of a finished run again and print the report")
    p.add_argument("run_dir")
    p.add_argument("--latency-repeats", type=int, default=10, help="timed passes per latency (0: no latency)")

    p = sub.add_parser("bench", help="measure latency of the dense, kept and shrunk models of a finished run")
    p.add_argument("run_dir")
    p.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")

    sub.add_parser("doctor", help="versions, devices, and which counting backends load (and why not)")

    p = sub.add_parser("report", help="redraw a run's plots from its report.json and print the final table")
    p.add_argument("run_dir")
    return parser


# -- the demo configuration -------------------------------------------------------------------------------
DEMO_MODEL = {"model": "resnet18", "width": 0.125, "dataset": "fashion_mnist"}
DEMO_CONFIG = {
    "zeta": 0.5,
    "delta": 1.0,
    "max_iterations": 8,
    "dense_epochs": 6,
    "finetune_epochs": 4,
    "lr": 0.05,
    "batch_size": 128,
    "train_subset": 6000,
    "magnitude": "neuron",
    "out_dir": "runs/demo",
}


def _config_from_args(args: argparse.Namespace, base: dict[str, object] | None = None):
    from .orchestrator.config import NepentheConfig

    fields = {f.name for f in dataclasses.fields(NepentheConfig)}
    overrides = dict(base or {})
    overrides.update({k: v for k, v in vars(args).items() if k in fields and v is not None and k != "preset"})
    return NepentheConfig.from_preset(args.preset, **overrides)


def _load_data_and_model(model_name: str, width: float, dataset: str, data_root: str | None, image_size: int):
    from .orchestrator.data import load_dataset
    from .orchestrator.models import build_model

    data = load_dataset(dataset, data_root, image_size)
    model = build_model(model_name, data.num_classes, data.in_channels, width, data.image_size)
    return data, model


def _model_name(model: str, width: float) -> str:
    return f"{model} model (width {width:g})"


def _extra(model: str, width: float, dataset: str, data_root: str | None, image_size: int) -> dict[str, object]:
    return {"model": model, "width": width, "dataset": dataset, "data_root": data_root, "image_size": image_size}


def _run_prune(args: argparse.Namespace, model_args: dict[str, object], base: dict[str, object] | None) -> int:
    from .orchestrator.checkpoint import load_state_dict_file
    from .orchestrator.loop import run_nepenthe
    from .orchestrator.report import summary_table

    cfg = _config_from_args(args, base)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.seed)
    data, model = _load_data_and_model(
        model_args["model"], model_args["width"], model_args["dataset"], model_args.get("data_root"),
        model_args.get("image_size", 32),
    )  # fmt: skip
    dense_checkpoint = getattr(args, "dense_checkpoint", None)
    if dense_checkpoint:
        load_state_dict_file(model, dense_checkpoint, _model_name(model_args["model"], model_args["width"]))
        cfg = dataclasses.replace(cfg, dense_epochs=0)
    extra = _extra(
        model_args["model"], model_args["width"], model_args["dataset"], model_args.get("data_root"),
        model_args.get("image_size", 32),
    )  # fmt: skip
    result = run_nepenthe(model, data.train, data.test, cfg, resume=args.resume, extra=extra)
    if result.shrunk is not None:
        print()
        print(summary_table(result.report))
        print(f"\nreport, plots and models in {result.out_dir}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    import nepenthe

    from .orchestrator.checkpoint import load_state_dict_file
    from .orchestrator.data import subset
    from .orchestrator.distributed import DistContext
    from .orchestrator.training import batches

    torch.manual_seed(0)
    data, model = _load_data_and_model(args.model, args.width, args.dataset, args.data_root, args.image_size)
    if args.checkpoint:
        load_state_dict_file(model, args.checkpoint, _model_name(args.model, args.width))
    model.eval()
    ctx = DistContext(0, 1, torch.device("cpu"))
    with torch.no_grad(), nepenthe.profile(model, ignore_ties=args.ignore_ties, fused=args.fused) as prof:
        for x, _ in batches(subset(data.train, args.subset, 0), args.batch_size, ctx, "profile", True):
            model(x)
    print(prof.summary())
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    return _run_prune(args, _extra(args.model, args.width, args.dataset, args.data_root, args.image_size), None)


def _cmd_demo(args: argparse.Namespace) -> int:
    print(
        "nepenthe demo: ResNet-18 (CIFAR stem, width 0.125) on 6000 Fashion-MNIST training images: train, prune "
        "by entropy, linearize, shrink, measure (test: all 10000 test images).",
        flush=True,
    )
    return _run_prune(args, dict(DEMO_MODEL), DEMO_CONFIG)


def _template_of(run_dir: str):
    from .orchestrator.models import build_model
    from .orchestrator.report import read_report

    report = read_report(run_dir)
    extra = report.get("extra") or {}
    if "model" not in extra:
        raise ValueError(f"{run_dir}: the report does not name its model (runs from the library API: rebuild by hand)")
    from .orchestrator.data import load_dataset

    data = load_dataset(extra["dataset"], extra.get("data_root"), extra.get("image_size", 32))
    model = build_model(extra["model"], data.num_classes, data.in_channels, extra["width"], data.image_size)
    example = data.test[0][0].unsqueeze(0)
    return model, example, report


def _cmd_shrink(args: argparse.Namespace) -> int:
    import nepenthe

    from .orchestrator.artifacts import load_kept

    template, example, _ = _template_of(args.run_dir)
    kept = load_kept(args.run_dir, template)
    repeats = args.latency_repeats
    _, report = nepenthe.shrink(kept, example, latency=repeats > 0, latency_repeats=max(1, repeats))
    print(report)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import nepenthe

    from .latency import compare_latency
    from .orchestrator.artifacts import load_kept
    from .orchestrator.checkpoint import checkpoint_path, load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    template, example, _ = _template_of(args.run_dir)
    kept = load_kept(args.run_dir, template)
    dense = template
    dense.load_state_dict(load_checkpoint(checkpoint_path(Path(args.run_dir) / "checkpoints", 0))["model"])
    shrunk, _ = nepenthe.shrink(kept, example, latency=False)
    # The dense model with only its BatchNorm folded: what shrinking gains beyond BN folding is depth reduction.
    folded, _ = nepenthe.shrink(dense, example, latency=False)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    print(f"latency (ms, median of {args.repeats}), CPU threads {torch.get_num_threads()}")
    print(f"{'batch':>6} {'dense':>9} {'dense+BN':>9} {'kept':>9} {'shrunk':>9} {'vs dense':>9} {'vs BN':>7}")
    for b in sizes:
        x = example.expand(b, *example.shape[1:]).contiguous()
        models = {"dense": dense.eval(), "folded": folded.eval(), "kept": kept.eval(), "shrunk": shrunk.eval()}
        t = list(compare_latency(models, x, warmup=10, repeats=args.repeats).values())
        print(f"{b:>6} {t[0]:>9.3f} {t[1]:>9.3f} {t[2]:>9.3f} {t[3]:>9.3f} {t[0] / t[3]:>8.2f}x {t[1] / t[3]:>6.2f}x")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    import nepenthe

    from .orchestrator.data import FASHION_MNIST_DIR

    print(f"nepenthe {nepenthe.__version__}  python {platform.python_version()}  {platform.platform()}")
    print(f"torch {torch.__version__}  (CUDA build {torch.version.cuda}, CPU threads {torch.get_num_threads()})")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except Exception as err:  # noqa: BLE001 - doctor reports every failure
        print(f"triton: not importable ({type(err).__name__}: {err})")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"CUDA available: {torch.cuda.device_count()} device(s): {names}")
    else:
        print("CUDA available: no")
    print("counting backends:")
    for status in nepenthe.backend_status():
        print(f"  {status.name:<7} {'loaded' if status.loaded else 'not loaded'}: {status.reason}")
    fm = (
        "found"
        if (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
        else "missing (apt-get install dataset-fashion-mnist)"
    )
    print(f"Fashion-MNIST at {FASHION_MNIST_DIR}: {fm}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .orchestrator.report import read_report, rebuild_plots, summary_table

    report = read_report(args.run_dir)
    plots = rebuild_plots(args.run_dir)
    print(summary_table(report))
    print("\nplots: " + ", ".join(str(p) for p in plots))
    return 0


_COMMANDS = {
    "profile": _cmd_profile,
    "prune": _cmd_prune,
    "demo": _cmd_demo,
    "shrink": _cmd_shrink,
    "bench": _cmd_bench,
    "doctor": _cmd_doctor,
    "report": _cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nepenthe`` console script; returns the exit status.

    Usage (a sketch)::

        main(["doctor"])
    """
    from .orchestrator.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        print(f"nepenthe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
