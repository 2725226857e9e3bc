"""Latency of depth reduction: dense vs identity-only vs shrunk, for four torchvision models.

For each model (random init, random BatchNorm statistics, eval mode) every other activation call site is
linearized with synthetic one-state counts (each channel on, off, or clamped at random), then:

- dense: the original model;
- identity-only: the linearized sites replaced by ``nn.Identity`` (what the papers do, nothing merged);
- identity+BN-fold: identity-only, then BatchNorm folded (no merge), to show what folding alone buys;
- shrunk: ``nepenthe.shrink`` of the linearized model (BN and affine maps folded, layers merged).

Latency is the median of ``--repeats`` timed runs after warm-up, in the same process, batch 1 and 32.

    python benchmarks/bench_shrink.py                     # CPU, 2 threads, all four models
    python benchmarks/bench_shrink.py --device cuda       # GPU when one is present
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics

import torch
import torchvision
from torch import nn

import nepenthe
from nepenthe.latency import latency_samples
from nepenthe.profiler.callsites import trace_call_sites
from nepenthe.surgery.shrink import identity_only

MODELS = ("resnet18", "mobilenet_v2", "vgg16_bn", "swin_t")


def prepare(name: str, size: int, fraction: str, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
    g = torch.Generator().manual_seed(seed)
    model = getattr(torchvision.models, name)().eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    x = torch.randn(1, 3, size, size, generator=g)
    with nepenthe.profile(model) as prof:
        model(x)
    counts = {}
    for site, c in prof.counts().items():
        pick = torch.randint(0, c.shape[1], (c.shape[0],), generator=g)
        counts[site] = torch.zeros_like(c)
        counts[site][torch.arange(c.shape[0]), pick] = 1
    names = [s.name for s in trace_call_sites(model, x)]
    return model, counts, names[::2] if fraction == "every-other" else names


def bench(
    name: str, size: int, batches: list[int], device: torch.device, repeats: int, warmup: int, fraction: str
) -> dict:
    model, counts, chosen = prepare(name, size, fraction)
    dense = copy.deepcopy(model)
    lin, _ = nepenthe.linearize(model, chosen, profile=counts)
    x = torch.randn(1, 3, size, size)
    small, report = nepenthe.shrink(lin, x, latency=False, check_dtypes=(torch.float32,))
    ident = identity_only(lin)
    ident_bn, _ = nepenthe.shrink(ident, x, latency=False, check=False)
    variants = {"dense": dense, "identity-only": ident, "identity+BN-fold": ident_bn, "shrunk": small}
    row = {
        "model": name,
        "linearized": f"{len(chosen)}/{len(counts)}",
        "conv_linear": (report.before["conv_linear"], report.after["conv_linear"]),
        "depth": (report.before["depth"], report.after["depth"]),
        "gflops": (report.before["flops"] / 1e9, report.after["flops"] / 1e9),
        "max_rel_diff_float32": report.max_rel_diff.get("float32"),
        "merges": len([d for d in report.merges if d.what.startswith("merge")]),
        "latency_ms": {},
        "min_ms": {},
    }
    for batch in batches:
        xb = torch.randn(batch, 3, size, size).to(device)
        reps = repeats if batch == 1 else max(3, repeats // 4)
        warm = warmup if batch == 1 else 1
        variants = {label: m.to(device) for label, m in variants.items()}
        for label, t in latency_samples(variants, xb, warm, reps).items():
            row["latency_ms"].setdefault(label, {})[batch] = statistics.median(t)
            row["min_ms"].setdefault(label, {})[batch] = min(t)
    return row


def min_ratio(row: dict, batch: int) -> str:
    best = row["min_ms"]
    return f"{best['identity-only'][batch] / best['shrunk'][batch]:.2f}x"


def table(rows: list[dict], batches: list[int]) -> str:
    head = "| model | linearized | conv/linear | depth | GFLOPs | batch | dense | identity-only | identity+BN-fold "
    head += "| shrunk | identity-only / shrunk | same, best run |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        for b in batches:
            t = {k: v[b] for k, v in r["latency_ms"].items()}
            lines.append(
                f"| {r['model']} | {r['linearized']} | {r['conv_linear'][0]} -> {r['conv_linear'][1]} "
                f"| {r['depth'][0]} -> {r['depth'][1]} | {r['gflops'][0]:.2f} -> {r['gflops'][1]:.2f} | {b} "
                f"| {t['dense']:.1f} | {t['identity-only']:.1f} | {t['identity+BN-fold']:.1f} | {t['shrunk']:.1f} "
                f"| **{t['identity-only'] / t['shrunk']:.2f}x** | {min_ratio(r, b)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--fraction",
        default="every-other",
        choices=["every-other", "all"],
        help="which activation call sites to linearize",
    )
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    desc = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    print(
        f"device: {desc}, threads: {args.threads}, torch {torch.__version__}, input {args.size}x{args.size}, "
        f"linearized: {args.fraction}"
    )
    rows = []
    for name in args.models:
        rows.append(bench(name, args.size, args.batches, device, args.repeats, args.warmup, args.fraction))
        print(table(rows[-1:], args.batches).splitlines()[-len(args.batches) :], flush=True)
    print(table(rows, args.batches))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
