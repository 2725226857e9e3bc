"""Summing a profile's counts over ``torch.distributed`` ranks (one metadata gather, one counts all-reduce)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from .profiling import Profile


def _metadata(prof: Profile) -> list[tuple]:
    return [
        (s.module_name, s.call_index, tuple(s.counts.shape), s.channel_dim, s.thresholds, prof._max_calls[name])
        for name, s in ((s.module_name, s) for s in prof._sites.values())
    ]


def all_reduce_profile(prof: Profile, group: object = None) -> None:
    """Make every rank's counts the sum over ranks; layers missing on a rank are created there first."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("Profile.all_reduce needs an initialized torch.distributed process group")
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, _metadata(prof), group=group)
    union: dict[tuple[str, int], tuple] = {}
    for rank, meta in enumerate(gathered):
        for entry in meta:
            key = entry[:2]
            if key in union and union[key][2:5] != entry[2:5]:
                raise ValueError(
                    f"Profile.all_reduce: layer {key[0]}@{key[1]} differs between ranks "
                    f"(shape, channel dim, thresholds: {union[key][2:5]} vs {entry[2:5]} on rank {rank})"
                )
            union.setdefault(key, entry)
            prof._max_calls[entry[0]] = max(prof._max_calls.get(entry[0], 0), entry[5])
    for (module_name, index), entry in union.items():
        if (module_name, index) not in prof._sites:
            if module_name not in prof._modules:
                raise ValueError(f"Profile.all_reduce: module {module_name!r} of another rank is not in this model")
            prof._site_from_state(
                {
                    "module_name": module_name,
                    "call_index": index,
                    "thresholds": entry[4],
                    "channel_dim": entry[3],
                    "counts": torch.empty(entry[2]),
                }  # fmt: skip
            )
    sites = [prof._sites[key] for key in sorted(union)]
    if not sites:
        return
    flat = torch.cat([s.counts.reshape(-1) for s in sites])
    entropy = torch.cat([s.entropy_sum for s in sites] + [torch.tensor([float(s.batches) for s in sites],
                        dtype=torch.float64, device=sites[0].entropy_sum.device)])  # fmt: skip
    dist.all_reduce(flat, group=group)
    if prof.aggregate == "batch_mean":
        dist.all_reduce(entropy, group=group)
    offset, e_offset = 0, 0
    for s in sites:
        n = s.counts.numel()
        s.counts.copy_(flat[offset : offset + n].view_as(s.counts))
        offset += n
        if prof.aggregate == "batch_mean":
            c = s.entropy_sum.numel()
            s.entropy_sum.copy_(entropy[e_offset : e_offset + c])
            e_offset += c
    if prof.aggregate == "batch_mean":
        for s, b in zip(sites, entropy[e_offset:].tolist(), strict=True):
            s.batches = int(round(b))
