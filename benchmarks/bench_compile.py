"""Benchmark: a training step with the model compiled (``TRAINING.COMPILE True``) against the eager model.

The model, batch, crop and class count are those of the demo config (UPerNet-ConvNeXt-T BiDense, batch 8 at
32 x 32, 7 classes). A step is forward, cross-entropy, backward and an AdamW update. For each method the eager and
the compiled model (the same initial weights, compiled through `engine.compilation.compile_model`, as the run
engine does) alternate their steps in the same run, so a change of machine load hits both; the first compiled step
(tracing and compilation) is timed apart, then the medians after warm-up and their ratio are printed.

    python -m benchmarks.bench_compile [--config configs/segmentation/upernet_bidense_demo.yaml] [--steps 10]
        [--warmup 2] [--threads 2] [--methods bidense fp32_0] [--default-allocator]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import models
from benchmarks.common import add_allocator_argument, apply_allocator, dab_passes_name
from configs.loading import load_config
from engine.compilation import compile_model
from engine.optimizer import adamw


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor) -> tuple[float, float]:
    """(seconds, loss) of forward, cross-entropy, backward and one optimizer step."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start, loss.item()


class _Holder(nn.Module):
    """The task module's shape as `compile_model` sees it: the network under ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def bench_method(method: str, model_type: str, num_classes: int, batch: int, size: int, steps: int,
                 warmup: int) -> dict[str, float]:
    """First compiled step, median eager and compiled step times, and |loss difference| of the first step."""
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, num_classes, (batch, size, size))
    eager = models.build_model("segmentation", model_type, method, num_classes=num_classes).train()
    compiled = compile_model(_Holder(copy.deepcopy(eager)), True).model
    runs = {name: (m, adamw(m.parameters(), 1e-4, 0.01), [])
            for name, m in (("eager", eager), ("compiled", compiled))}
    first, compiled_loss = train_step(*runs["compiled"][:2], images, labels)
    eager_loss = train_step(*runs["eager"][:2], images, labels)[1]
    for step in range(warmup + steps):
        for model, optimizer, times in runs.values():
            seconds = train_step(model, optimizer, images, labels)[0]
            if step >= warmup:
                times.append(seconds)
    result = {name: statistics.median(times) for name, (_, _, times) in runs.items()}
    return {**result, "first": first, "loss_gap": abs(compiled_loss - eager_loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/segmentation/upernet_bidense_demo.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--methods", nargs="+", default=["bidense", "fp32_0"])
    add_allocator_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator = apply_allocator(args)
    cfg = load_config("segmentation", args.config, [])
    batch, size, classes = cfg.TRAINING.BATCH_SIZE_ON_1_GPU, cfg.DATASET.CROP_SIZE, cfg.MODEL.NUM_CLASSES

    print(f"training step (forward, CE, backward, AdamW) of {cfg.MODEL.MODEL_TYPE}, batch {batch} at {size}x{size}, "
          f"{classes} classes, {args.threads} threads, median of {args.steps} after {args.warmup} warm-up; "
          f"torch {torch.__version__}, {allocator}, {dab_passes_name(torch.device('cpu'))} (eager)")
    print(f"{'method':<10}{'first compiled s':>18}{'eager s':>10}{'compiled s':>12}{'compiled/eager':>16}"
          f"{'|loss gap| step 1':>19}")
    for method in args.methods:
        r = bench_method(method, cfg.MODEL.MODEL_TYPE, classes, batch, size, args.steps, args.warmup)
        print(f"{method:<10}{r['first']:>18.1f}{r['eager']:>10.3f}{r['compiled']:>12.3f}"
              f"{r['compiled'] / r['eager']:>15.2f}x{r['loss_gap']:>19.2e}")


if __name__ == "__main__":
    main()
