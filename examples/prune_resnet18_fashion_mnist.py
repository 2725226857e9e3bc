"""NEPENTHE through the library API: ResNet-18 (CIFAR stem, width 0.125) on a Fashion-MNIST subset.

The same run as ``nepenthe demo``, written out: build the model and data, choose a config, run the loop, print
the final table. Any ``nn.Module`` and any datasets of ``(image, label)`` pairs work the same way.

    python examples/prune_resnet18_fashion_mnist.py --out runs/example
"""

from __future__ import annotations

import argparse

import torch

import nepenthe
from nepenthe.orchestrator import load_dataset, summary_table
from nepenthe.orchestrator.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/example")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_dataset("fashion_mnist")  # /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=1, width=0.125)
    config = nepenthe.NepentheConfig(
        zeta=0.5, delta=1.0, max_iterations=8, dense_epochs=6, finetune_epochs=4, lr=0.05, train_subset=6000,
        magnitude="neuron", out_dir=args.out,
    )  # fmt: skip
    result = nepenthe.run_nepenthe(model, data.train, data.test, config)
    print(summary_table(result.report))
    print("removed:", ", ".join(result.removed) or "none")


if __name__ == "__main__":
    main()
