"""The NEPENTHE loop (METHOD.md section 4): it only sequences the profiler, the pruner and the surgeon.

Train (or take) the dense model and record its accuracy; then per iteration: count activation states on the
training data in eval mode, linearize the zero-entropy layers, allocate the budget and prune, fine-tune,
evaluate. The loop stops at the first iteration whose accuracy drop from the dense model exceeds ``delta`` and
keeps the last model within ``delta``; that model is then shrunk (BatchNorm folded, layers merged) and reported.

Every iteration ends with a checkpoint (:mod:`.checkpoint`); ``resume=True`` continues from the last one. Each
phase draws its randomness from ``(seed, iteration)``, so a resumed run computes exactly what an uninterrupted
run computes. The model structure is not pickled: a checkpoint records which call sites were linearized in which
iteration (with the counts that justified it), and resuming replays those ``linearize`` calls on a fresh copy of
the dense architecture before loading the weights.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..latency import compare_latency
from ..profiler.callsites import call_site_names
from .artifacts import SHRUNK_NAME, save_kept
from .checkpoint import (
    CheckpointError,
    atomic_save,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import NepentheConfig
from .data import subset
from .distributed import DistContext, barrier, init_distributed
from .masks import PruningMasks
from .prunable import feeding_calls, feeding_calls_in_order
from .pruner import apply_pruning, plan_pruning
from .report import write_report
from .training import batches, evaluate, phase_seed, train


@dataclass
class RunResult:
    """What a NEPENTHE run produced. ``report`` is the JSON-able dict also written to ``out_dir/report.json``."""

    model: nn.Module
    """The kept model: linearized layers replaced, pruned weights zero, plain parameters (no masks)."""
    shrunk: nn.Module | None
    """The kept model after ``nepenthe.shrink`` (rank 0 only; None elsewhere)."""
    dense_accuracy: float
    final_accuracy: float
    removed: list[str]
    """Activation call sites linearized in the kept model."""
    total_layers: int
    stop_reason: str
    history: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _architecture(model: nn.Module) -> list[list[Any]]:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def _linearize(model: nn.Module, layers: list[str], counts: Any) -> Any:
    import nepenthe

    _, report = nepenthe.linearize(model, layers, profile=counts)
    return report


def _profile(model: nn.Module, data: Dataset, cfg: NepentheConfig, ctx: DistContext, desc: str) -> Any:
    """Count activation states of ``model`` (eval mode) on ``data``, summed over ranks."""
    import nepenthe

    model.eval()
    with torch.no_grad(), nepenthe.profile(model, ignore_ties=cfg.ignore_ties) as prof:
        for x, _ in batches(data, cfg.eval_batch_size, ctx, desc, cfg.progress, cfg.num_workers):
            model(x)
    if ctx.distributed:
        prof.all_reduce()
    return prof


def _cpu_counts(prof: Any, names: list[str]) -> dict[str, torch.Tensor]:
    counts = prof.counts()
    return {n: counts[n].cpu() for n in names}


class _Run:
    """The state of one run between iterations (what a checkpoint holds)."""

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        test_data: Dataset,
        cfg: NepentheConfig,
        ctx: DistContext,
        extra: dict[str, Any],
    ) -> None:
        self.cfg, self.ctx, self.extra = cfg, ctx, extra
        self.out = Path(cfg.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.template = copy.deepcopy(model).cpu()
        self.architecture = _architecture(model)
        self.model = model.to(ctx.device)
        self.train_set = subset(train_data, cfg.train_subset, cfg.seed)
        self.test_set = subset(test_data, cfg.test_subset, cfg.seed + 1)
        self.profile_set = subset(self.train_set, cfg.profile_subset, cfg.seed + 2)
        self.example_input = self.train_set[0][0].unsqueeze(0)
        self.masks = PruningMasks()
        self.linearized: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.dense_accuracy = float("nan")
        self.iteration = 0
        self.stopped: str | None = None
        self.optimizer_state: dict[str, Any] | None = None
        self.profile_state: dict[str, Any] | None = None
        dense_feeders = feeding_calls(copy.deepcopy(self.template).eval(), self.example_input)
        self.prunable = {layer for layer in dense_feeders.values() if layer is not None}
        names = call_site_names(dense_feeders)
        if names and not self.prunable:
            raise ValueError(
                f"no conv or linear layer of {type(model).__name__} feeds any of its {len(names)} activation call "
                "sites, so NEPENTHE has nothing to prune. Only nn.Conv1d/2d/3d and nn.Linear modules are pruned, "
                "and a conv that computes its weight in its forward (timm's weight-standardized StdConv2d, in its "
                "BiT ResNetV2s and NFNets) runs as a function that masks cannot reach."
            )
        fed: dict[str, list[str]] = {}
        for key, layer in dense_feeders.items():
            if layer is not None:
                fed.setdefault(layer, []).append(names[key])
        # A layer feeding exactly one call site names that site for good, whatever surgery renames it to later.
        self.canonical_by_layer = {layer: sites[0] for layer, sites in fed.items() if len(sites) == 1}
        self.total_layers = len(names)

    def canonical(self, prof: Any, feeders: dict[tuple[str, int], str | None]) -> dict[str, str]:
        """Profiled layer name -> its name in the dense model (stable across iterations, for reports)."""
        out = {}
        for name, info in prof.layers.items():
            layer = feeders.get((info.module_name, info.call_index))
            out[name] = self.canonical_by_layer.get(layer, name) if layer is not None else name
        return out

    # -- state ---------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "config": self.cfg.to_dict(),
            "config_fingerprint": self.cfg.fingerprint(),
            "architecture": self.architecture,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "masks": self.masks.state_dict(),
            "optimizer": self.optimizer_state,
            "profile": self.profile_state,
            "linearized": self.linearized,
            "history": self.history,
            "dense_accuracy": self.dense_accuracy,
            "stopped": self.stopped,
            "rng": rng_state(),
            "extra": self.extra,
        }

    def save(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.state(), self.ckpt_dir)
        barrier(self.ctx)

    def rebuild(self, state: dict[str, Any], path: Path) -> nn.Module:
        """The model of checkpoint ``state``: the dense template, the linearizations replayed, the weights."""
        model = copy.deepcopy(self.template)
        for step in state["linearized"]:
            _linearize(model, step["layers"], step["counts"])
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {path}: its weights do not fit the model: {err}") from err
        return model.to(self.ctx.device).eval()

    def check(self, state: dict[str, Any], path: Path) -> None:
        if state["architecture"] != self.architecture:
            raise CheckpointError(
                f"checkpoint {path} was written for a different model (its parameter names and shapes differ "
                "from the model given); pass the same architecture or start in a fresh out_dir"
            )
        if state["config_fingerprint"] != self.cfg.fingerprint():
            other = NepentheConfig.from_dict(state["config"])
            raise CheckpointError(
                f"checkpoint {path} was written with a different configuration (fields {self.cfg.differences(other)} "
                "differ); resume with the same settings or start in a fresh out_dir"
            )

    def restore(self) -> bool:
        """Continue from the last checkpoint in ``out_dir``; False when there is none."""
        found = list_checkpoints(self.ckpt_dir)
        if not found:
            return False
        iteration, path = next(reversed(found.items()))
        state = load_checkpoint(path)
        self.check(state, path)
        self.model = self.rebuild(state, path)
        self.masks.load_state_dict(state["masks"])
        self.linearized = state["linearized"]
        self.history = state["history"]
        self.dense_accuracy = state["dense_accuracy"]
        self.iteration = iteration
        self.stopped = state["stopped"]
        self.optimizer_state = state["optimizer"]
        self.profile_state = state["profile"]
        set_rng_state(state["rng"])
        self.log(f"resumed from {path} (iteration {iteration})")
        return True

    def log(self, message: str) -> None:
        if self.ctx.is_main:
            print(f"[nepenthe] {message}", flush=True)

    # -- phases --------------------------------------------------------------------------------------------
    def dense(self) -> None:
        cfg = self.cfg
        _seed_everything(phase_seed(cfg.seed, 0))
        start = time.perf_counter()
        loss = float("nan")
        if cfg.dense_epochs > 0:
            optimizer, loss = train(
                self.model, self.train_set, cfg, self.ctx, epochs=cfg.dense_epochs,
                lr=cfg.dense_lr or cfg.lr, phase=0, desc="dense",
            )  # fmt: skip
            self.optimizer_state = optimizer.state_dict()
        self.dense_accuracy = evaluate(self.model, self.test_set, cfg, self.ctx, "eval dense")
        self.log(f"dense model: accuracy {self.dense_accuracy:.2f}% ({time.perf_counter() - start:.0f} s)")
        self.history = [{"iteration": 0, "accuracy": self.dense_accuracy, "drop": 0.0, "accepted": True,
                         "sparsity": 0.0, "train_loss": loss, "seconds": time.perf_counter() - start,
                         "linearized": [], "removed_total": 0, "zero_entropy_layers": 0, "layer_entropy": {},
                         "pruned_weights": 0, "budget": {}}]  # fmt: skip
        self.save()

    def step(self) -> str | None:
        """One iteration; returns a stop reason, or None to go on."""
        cfg, ctx = self.cfg, self.ctx
        k = self.iteration + 1
        start = time.perf_counter()
        _seed_everything(phase_seed(cfg.seed, k))
        feeders = feeding_calls_in_order(self.model, self.example_input.to(ctx.device), self.prunable)
        prof = _profile(self.model, self.profile_set, cfg, ctx, f"profile {k}")
        canonical = self.canonical(prof, feeders)
        entropy = {canonical[n]: h for n, h in prof.layer_entropy(cfg.layer_reduction).items()}
        zero = prof.linearizable()
        budgets = plan_pruning(self.model, prof, feeders, self.masks, cfg, skip=set(zero))
        to_prune = sum(b.prune for b in budgets.values())
        if not zero and to_prune == 0:
            return "nothing left to prune or linearize"
        if zero:
            counts = _cpu_counts(prof, zero)
            _linearize(self.model, zero, counts)
            self.linearized.append(
                {"iteration": k, "layers": list(zero), "names": [canonical[n] for n in zero], "counts": counts}
            )
        pruned = apply_pruning(self.model, self.masks, budgets)
        optimizer, loss = train(
            self.model, self.train_set, cfg, ctx, epochs=cfg.finetune_epochs, lr=cfg.lr, phase=k,
            masks=self.masks, desc=f"fine-tune {k}",
        )  # fmt: skip
        accuracy = evaluate(self.model, self.test_set, cfg, ctx, f"eval {k}")
        drop = self.dense_accuracy - accuracy
        removed_total = sum(len(s["layers"]) for s in self.linearized)
        record = {
            "iteration": k,
            "accuracy": accuracy,
            "drop": drop,
            "accepted": drop <= cfg.delta,
            "sparsity": self.masks.sparsity(self.model),
            "train_loss": loss,
            "seconds": time.perf_counter() - start,
            "linearized": [canonical[n] for n in zero],
            "removed_total": removed_total,
            "zero_entropy_layers": len(zero),
            "layer_entropy": entropy,
            "pruned_weights": pruned,
            "budget": {n: {"prune": b.prune, "alive": b.alive, "share": b.share, "irrelevance": b.irrelevance,
                           "capped": b.capped} for n, b in budgets.items()},
        }  # fmt: skip
        self.history.append(record)
        self.iteration = k
        self.optimizer_state = optimizer.state_dict()
        self.profile_state = prof.state_dict()
        self.stopped = None if record["accepted"] else f"accuracy drop {drop:.2f} exceeded delta {cfg.delta}"
        self.log(
            f"iter {k:2d} | sparsity {100 * record['sparsity']:5.1f}% | zero-entropy layers {len(zero):2d} | "
            f"removed {removed_total:2d}/{self.total_layers} | acc {accuracy:6.2f}% | drop {drop:+.2f} | "
            f"{record['seconds']:.0f} s"
        )
        self.save()
        return self.stopped

    def kept(self) -> tuple[nn.Module, int]:
        """The last model within delta and its iteration."""
        last = self.history[-1]
        if last["accepted"]:
            return self.model, last["iteration"]
        keep = max(r["iteration"] for r in self.history if r["accepted"])
        path = list_checkpoints(self.ckpt_dir).get(keep)
        if path is None:
            raise CheckpointError(f"the checkpoint of iteration {keep} (the last within delta) is missing")
        return self.rebuild(load_checkpoint(path), path), keep


def run_nepenthe(
    model: nn.Module,
    train_data: Dataset,
    test_data: Dataset,
    config: NepentheConfig | None = None,
    *,
    resume: bool = False,
    extra: dict[str, Any] | None = None,
) -> RunResult:
    """Run NEPENTHE on ``model``: prune by entropy until layers linearize, keep the last model within delta,
    shrink it, and write checkpoints, ``report.json`` and plots under ``config.out_dir``.

    ``model`` is trained in place first (``config.dense_epochs``; 0 takes it as it comes). ``train_data`` and
    ``test_data`` yield ``(input, label)`` pairs. ``resume=True`` continues from the last checkpoint in
    ``out_dir``; without it an ``out_dir`` that already holds checkpoints is refused. ``extra`` is stored in
    the checkpoints and the report (the CLI records the model and dataset names there). Under ``torchrun``
    every rank calls this; fine-tuning uses DDP, counts are summed over ranks, and only rank 0 writes.

    Usage (a sketch)::

        data = nepenthe.orchestrator.load_dataset("digits")
        model = nepenthe.orchestrator.build_model("small_cnn", in_channels=1)
        result = nepenthe.run_nepenthe(model, data.train, data.test, NepentheConfig(out_dir="runs/x"))
        result.removed, result.final_accuracy
    """
    cfg = config if config is not None else NepentheConfig()
    if not isinstance(cfg, NepentheConfig):
        raise TypeError(f"config must be a NepentheConfig, got {type(cfg).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    ctx = init_distributed(cfg.device)
    run = _Run(model, train_data, test_data, cfg, ctx, dict(extra or {}))
    has_checkpoints = bool(list_checkpoints(run.ckpt_dir))
    if has_checkpoints and not resume:
        raise CheckpointError(
            f"{run.ckpt_dir} already holds checkpoints; pass resume=True (--resume) to continue that run, "
            "or choose another out_dir"
        )
    if not (resume and run.restore()):
        run.dense()
    stop = run.stopped
    while stop is None:
        if run.iteration >= cfg.max_iterations:
            stop = f"iteration cap {cfg.max_iterations} reached"
            break
        stop = run.step()
    run.log(f"stopped: {stop}")
    return _finish(run, stop)


def _finish(run: _Run, stop: str) -> RunResult:
    """Take the kept model, optionally linearize what is left at zero entropy, shrink, measure and report."""
    import nepenthe

    cfg, ctx = run.cfg, run.ctx
    model, kept_iteration = run.kept()
    accuracy = next(r["accuracy"] for r in run.history if r["iteration"] == kept_iteration)
    removed = [n for s in run.linearized if s["iteration"] <= kept_iteration for n in s["names"]]
    final_step: dict[str, Any] = {"linearized": [], "accepted": False}
    final_counts: dict[str, torch.Tensor] = {}
    if cfg.finalize_linearize and kept_iteration > 0:
        _seed_everything(phase_seed(cfg.seed, kept_iteration + 1))
        feeders = feeding_calls_in_order(model, run.example_input.to(ctx.device), run.prunable)
        prof = _profile(model, run.profile_set, cfg, ctx, "profile final")
        canonical = run.canonical(prof, feeders)
        zero = prof.linearizable()
        if zero:
            trial = copy.deepcopy(model)
            counts = _cpu_counts(prof, zero)
            _linearize(trial, zero, counts)
            trial_accuracy = evaluate(trial, run.test_set, cfg, ctx, "eval final")
            accepted = run.dense_accuracy - trial_accuracy <= cfg.delta
            names = [canonical[n] for n in zero]
            final_step = {"linearized": names, "layers": list(zero), "accuracy": trial_accuracy, "accepted": accepted}
            if accepted:
                model, accuracy, removed, final_counts = trial, trial_accuracy, removed + names, counts
            run.log(
                f"final linearization of {len(zero)} more layer(s): acc {trial_accuracy:.2f}% "
                f"({'kept' if accepted else 'rejected'})"
            )
    shrunk, shrink_dict, latency, nonzero = None, None, {}, {}
    if ctx.is_main:
        local = DistContext(0, 1, ctx.device)
        example = run.example_input.to(ctx.device)
        repeats = cfg.latency_repeats
        shrunk, shrink_report = nepenthe.shrink(copy.deepcopy(model).eval(), example, latency_repeats=repeats)
        shrink_dict = shrink_report.to_dict()
        shrunk_accuracy = evaluate(shrunk, run.test_set, cfg, local, "eval shrunk")
        dense = _dense_model(run)
        # The same BatchNorm folding applied to the dense model: the baseline that isolates depth reduction.
        dense_folded, _ = nepenthe.shrink(dense, example, latency=False)
        models = {"dense": dense, "dense_folded": dense_folded, "kept": model, "shrunk": shrunk}
        timed = compare_latency({k: m.eval() for k, m in models.items()}, example, warmup=10, repeats=repeats)
        latency = {
            "batch": 1,
            "device": str(ctx.device),
            **{f"{k}_ms": t for k, t in timed.items()},
            "shrunk_accuracy": shrunk_accuracy,
        }
        nonzero = {"dense": _nonzero(dense), "kept": _nonzero(model), "shrunk": _nonzero(shrunk)}
        _save_models(
            run, model, shrunk, shrink_report, final_step.get("layers", []) if final_counts else [], final_counts
        )
    result = RunResult(
        model=model,
        shrunk=shrunk,
        dense_accuracy=run.dense_accuracy,
        final_accuracy=accuracy,
        removed=removed,
        total_layers=run.total_layers,
        stop_reason=stop,
        history=run.history,
        out_dir=run.out,
    )
    result.report = {
        "config": cfg.to_dict(),
        "extra": run.extra,
        "dense_accuracy": run.dense_accuracy,
        "final_accuracy": accuracy,
        "kept_iteration": kept_iteration,
        "stop_reason": stop,
        "total_layers": result.total_layers,
        "removed": removed,
        "final_linearization": final_step,
        "iterations": run.history,
        "shrink": shrink_dict,
        "latency": latency,
        "nonzero_parameters": nonzero,
    }
    if ctx.is_main:
        write_report(result.report, run.out)
    barrier(ctx)
    return result


def _nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def _dense_model(run: _Run) -> nn.Module:
    path = list_checkpoints(run.ckpt_dir).get(0)
    if path is None:
        raise CheckpointError(f"the dense checkpoint is missing from {run.ckpt_dir}")
    return run.rebuild(load_checkpoint(path), path).eval()


def _save_models(
    run: _Run,
    kept: nn.Module,
    shrunk: nn.Module,
    shrink_report: Any,
    final_layers: list[str],
    final_counts: dict[str, torch.Tensor],
) -> None:
    """The kept model (replayable: see :mod:`.artifacts`), the whole shrunk module, and the shrink plan."""
    steps = [s for s in run.linearized if s["iteration"] <= _kept_iteration(run)]
    if final_layers:
        steps = [*steps, {"iteration": "final", "layers": final_layers, "counts": final_counts}]
    save_kept(run.out, steps, kept, run.extra)
    try:
        atomic_save(copy.deepcopy(shrunk).cpu(), run.out / SHRUNK_NAME)
    except Exception as err:  # noqa: BLE001 - a model class that cannot be pickled is reported, not fatal
        run.log(
            f"the shrunk model could not be pickled ({type(err).__name__}: {err}); rebuild it with `nepenthe shrink`"
        )
    plan = getattr(shrink_report, "plan", None)
    if plan:
        (run.out / "shrink_plan.json").write_text(json.dumps(plan, indent=2, default=str))


def _kept_iteration(run: _Run) -> int:
    return max(r["iteration"] for r in run.history if r["accepted"])
