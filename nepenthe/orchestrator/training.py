"""Training, fine-tuning under persistent masks, and evaluation; DDP-aware, with progress bars.

Shuffling is drawn from a generator seeded by the run's seed and the phase, never from global state, so a
phase that is run again after a resume sees exactly the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from .config import NepentheConfig
from .distributed import DistContext, all_reduce_sum
from .masks import PruningMasks


def phase_seed(seed: int, phase: int) -> int:
    """The seed of training phase ``phase`` (0: dense training, k: fine-tuning of iteration k)."""
    return (seed * 1_000_003 + phase * 7919) % (2**31 - 1)


def shard(dataset: Dataset, ctx: DistContext) -> Dataset:
    """This rank's share of ``dataset`` for counting and evaluation: every world_size-th sample, no padding."""
    if not ctx.distributed:
        return dataset
    return Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world_size)))  # type: ignore[arg-type]


def batches(
    dataset: Dataset, batch_size: int, ctx: DistContext, desc: str, progress: bool, num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of ``dataset`` in order, moved to the device, with a progress bar on rank 0."""
    loader = DataLoader(shard(dataset, ctx), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not (progress and ctx.is_main)):
        yield x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)


def build_optimizer(model: nn.Module, cfg: NepentheConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` over the trainable parameters of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: NepentheConfig, step: int, total_steps: int) -> float:
    """The learning-rate multiplier at ``step`` of a phase of ``total_steps`` steps under ``cfg.schedule``."""
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))
    if cfg.schedule == "step":
        passed = sum(step >= m * total_steps for m in cfg.milestones)
        return 0.1**passed
    return 1.0


def train(
    model: nn.Module,
    dataset: Dataset,
    cfg: NepentheConfig,
    ctx: DistContext,
    *,
    epochs: int,
    lr: float,
    phase: int,
    masks: PruningMasks | None = None,
    desc: str = "train",
) -> tuple[torch.optim.Optimizer, float]:
    """Train ``model`` for ``epochs`` epochs (DDP when distributed); pruned weights stay zero.

    Returns the optimizer (its state goes into the checkpoint) and the mean loss of the last epoch.
    """
    model.train()
    net = DistributedDataParallel(model) if ctx.distributed else model
    optimizer = build_optimizer(model, cfg, lr)
    sampler = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=phase_seed(cfg.seed, phase)
    )
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)
    total_steps = epochs * len(loader)
    loss_fn = nn.CrossEntropyLoss()
    step, last_loss = 0, float("nan")
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        seen = 0
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", leave=False, disable=not (cfg.progress and ctx.is_main))
        for x, y in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(cfg, step, total_steps)
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            if masks is not None:
                masks.mask_gradients(model)
            optimizer.step()
            if masks is not None:
                masks.apply(model)
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            step += 1
        last_loss = float(loss_sum) / max(1, seen)
    model.eval()
    return optimizer, last_loss


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, cfg: NepentheConfig, ctx: DistContext, desc: str = "eval") -> float:
    """Top-1 accuracy in percent over all of ``dataset`` (summed over ranks when distributed)."""
    model.eval()
    tally = torch.zeros(2, dtype=torch.int64, device=ctx.device)
    for x, y in batches(dataset, cfg.eval_batch_size, ctx, desc, cfg.progress, cfg.num_workers):
        tally[0] += (model(x).argmax(dim=1) == y).sum()
        tally[1] += y.numel()
    all_reduce_sum(tally, ctx)
    if int(tally[1]) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return 100.0 * int(tally[0]) / int(tally[1])
