"""Two CPU processes (gloo) profile different data shards of a DDP model; all_reduce gives the full-data counts."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import nepenthe

WORLD = 2


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU6(),
        nn.Flatten(), nn.Linear(6 * 5 * 5, 8), nn.GELU(),
    ).eval()  # fmt: skip


def make_data() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(3, 3, 5, 5, generator=generator) * 3 for _ in range(6)]


class Branchy(nn.Module):
    """Runs its ``extra`` activation only on batches of 3: seen on one rank only below."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.extra = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.fc(x))
        return self.extra(y - 0.3) if x.shape[0] == 3 else y


def branchy_data() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(3 if i % 2 == 0 else 2, 4, generator=generator) for i in range(4)]


def profile_shard(rank: int, out: str) -> None:
    """Rank ``rank``'s part: profile its shards, all_reduce, save what it got under ``out``. Its DDP model and
    profiles (and any gloo work they hold) are freed when it returns, before the group is torn down."""
    model = make_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    data = make_data()
    with nepenthe.profile(ddp) as prof, torch.no_grad():
        for x in data[rank::WORLD]:
            ddp(x)
    if rank == 1:
        model(data[0])  # outside the profile: must not count
    prof.all_reduce()
    torch.manual_seed(0)
    branchy = Branchy()
    with nepenthe.profile(branchy) as partial:
        for x in branchy_data()[rank::WORLD]:
            branchy(x)
    partial.all_reduce()
    torch.save(
        {"counts": prof.counts(), "layers": list(prof.layers), "partial": partial.counts()}, f"{out}/rank{rank}.pt"
    )


def worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    # A file store: no TCP port to pick (and lose to another process), and no store server thread in rank 0 to
    # tear down while rank 1 still talks to it (a rare abort, "terminate called without an active exception").
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=WORLD)
    try:
        profile_shard(rank, out)
        dist.barrier()  # both ranks done with the group before either tears it down
    finally:
        dist.destroy_process_group()
    # The same abort still came, rarely (none in 60 runs in a row), from a place not found. Gloo threads torn down
    # with the interpreter abort that way (pytorch/pytorch PR 179291): with the work saved and the group destroyed,
    # leave without the interpreter's teardown. An exception above still fails the run.
    os._exit(0)


def test_all_reduce_over_two_gloo_processes_equals_one_process_on_all_data(tmp_path):
    mp.spawn(worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    model = make_model()
    with nepenthe.profile(model) as single, torch.no_grad():
        for x in make_data():
            model(x)
    expected = single.counts()
    torch.manual_seed(0)
    branchy = Branchy()
    with nepenthe.profile(branchy) as whole:
        for x in branchy_data():
            branchy(x)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["layers"] == list(expected) == ["2", "4", "7"]
        for layer, counts in expected.items():
            assert torch.equal(got["counts"][layer], counts), (rank, layer)
        # "extra" ran on rank 0 only: rank 1 gets the layer from the all_reduce
        assert sorted(got["partial"]) == sorted(whole.counts()) == ["act", "extra"]
        for layer, counts in whole.counts().items():
            assert torch.equal(got["partial"][layer], counts), (rank, layer)
