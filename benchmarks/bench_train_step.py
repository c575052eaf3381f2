"""Benchmark: one whole training step of a binary model against its float mirror.

A step is forward, cross-entropy against random labels (segmentation, 151 classes), backward and an AdamW update.
For each model type (UperNet; DPT when registered) the binary method and the float mirror are built once and
their steps alternate in the same run (so a change of machine load hits both), after warm-up steps; the table
gives each median and the binary / float ratio.

    python -m benchmarks.bench_train_step [--steps 5] [--warmup 1] [--batch 2] [--size 256] [--threads 2]
        [--binary bidense] [--float fp32_0] [--models upernet dpt]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import models

NUM_CLASSES = 151


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Seconds for forward, cross-entropy, backward and one optimizer step."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def bench_pair(model_type: str, binary_types: tuple[str, str], steps: int, warmup: int, batch: int, size: int) -> dict:
    """Median step time of each method on ``model_type``, steps alternating between the two models."""
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size))
    runs = {}
    for binary_type in binary_types:
        model = models.build_model("segmentation", model_type, binary_type, num_classes=NUM_CLASSES).train()
        runs[binary_type] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01), [])
    for step in range(warmup + steps):
        for model, optimizer, times in runs.values():
            seconds = train_step(model, optimizer, images, labels)
            if step >= warmup:
                times.append(seconds)
    return {binary_type: statistics.median(times) for binary_type, (_, _, times) in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--binary", default="bidense")
    parser.add_argument("--float", dest="float_", default="fp32_0")
    parser.add_argument("--models", nargs="+", default=["upernet", "dpt"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"training step (forward, CE, backward, AdamW), batch {args.batch} at {args.size}x{args.size}, "
          f"{args.threads} threads, median of {args.steps} after {args.warmup} warm-up")
    print(f"{'model':<10}{args.binary + ' s':>14}{args.float_ + ' s':>14}{'ratio':>9}")
    for model_type in args.models:
        if model_type not in models.list_models():
            print(f"{model_type:<10}  (not registered)")
            continue
        medians = bench_pair(model_type, (args.binary, args.float_), args.steps, args.warmup, args.batch, args.size)
        binary, float_ = medians[args.binary], medians[args.float_]
        print(f"{model_type:<10}{binary:>14.3f}{float_:>14.3f}{binary / float_:>8.2f}x")


if __name__ == "__main__":
    main()
