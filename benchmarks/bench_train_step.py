"""Benchmark: one whole training step, or one evaluation forward, of a binary model against its float mirror.

A training step is forward, cross-entropy against random labels (segmentation, 151 classes), backward and an AdamW
update; an evaluation forward (``--mode eval``) is the model in eval mode under ``torch.inference_mode`` (the
binary layers then use their cached binary weights, README "Speed"). For each model type the binary method and
the float mirror are built once and their steps alternate in the same run (so a change of machine load hits both),
after warm-up steps; the table gives each median, the binary / float ratio, images/s and the peak memory.
``--compile`` compiles both models first (``torch.compile``, as ``TRAINING.COMPILE True``); the first warm-up step
then traces and compiles (give at least one), and the CPU memory column is left out.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps; on the CPU (no allocator
statistics) in training the bytes saved for backward (unique storages, parameters excluded), in evaluation the
bytes of the evaluation cache.

    python -m benchmarks.bench_train_step [--mode train|eval] [--steps 5] [--warmup 1] [--batch 2] [--size 256]
        [--threads 2] [--device cpu|cuda] [--precision 32|bf16-mixed] [--clock wall|cpu]
        [--binary bidense] [--float fp32_0] [--models upernet dpt] [--compile] [--default-allocator]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import models
from benchmarks.common import (
    CLOCKS,
    add_allocator_argument,
    apply_allocator,
    autocast,
    dab_passes_name,
    saved_bytes,
    sync,
)
from engine.optimizer import adamw

NUM_CLASSES = 151


clock = time.perf_counter  # set by --clock


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               precision: str) -> float:
    """Seconds for forward, cross-entropy, backward and one optimizer step."""
    sync(images.device)
    start = clock()
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device, precision):
        loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    sync(images.device)
    return clock() - start


def eval_step(model: nn.Module, images: torch.Tensor, precision: str) -> float:
    """Seconds for one forward in eval mode under inference mode."""
    sync(images.device)
    start = clock()
    with torch.inference_mode(), autocast(images.device, precision):
        model(images)
    sync(images.device)
    return clock() - start


def cache_bytes(model: nn.Module) -> int:
    """Bytes held by the binary layers' evaluation caches."""
    return sum(value.nbytes for m in model.modules() for _, value in m.__dict__.get("_eval_cache", {}).values())


def bench_pair(model_type: str, binary_types: tuple[str, str], mode: str, steps: int, warmup: int, batch: int,
               size: int, device: torch.device, precision: str, compile_: bool = False,
               ) -> dict[str, tuple[float, float]]:
    """(median seconds, peak bytes) of each method on ``model_type``, steps alternating between the two models."""
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size), device=device)
    runs = {}
    for binary_type in binary_types:
        model = models.build_model("segmentation", model_type, binary_type, num_classes=NUM_CLASSES).to(device)
        model.train(mode == "train")
        if compile_:
            model.compile()
        optimizer = adamw(model.parameters(), 1e-4, 0.01) if mode == "train" else None
        runs[binary_type] = (model, optimizer, [], [0])
    for step in range(warmup + steps):
        for model, optimizer, times, peak in runs.values():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if mode == "train":
                seconds = train_step(model, optimizer, images, labels, precision)
            else:
                seconds = eval_step(model, images, precision)
            if step >= warmup:
                times.append(seconds)
                if device.type == "cuda":
                    peak[0] = max(peak[0], torch.cuda.max_memory_allocated(device))
    result = {}
    for binary_type, (model, _, times, peak) in runs.items():
        if device.type == "cpu" and not compile_:
            peak[0] = saved_bytes(model, images, precision) if mode == "train" else cache_bytes(model)
        result[binary_type] = (statistics.median(times), peak[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("train", "eval"), default="train")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--precision", choices=("32", "bf16-mixed"), default="32")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: elapsed seconds; cpu: this process's CPU seconds (all threads; steadier on a "
                             "machine shared with other jobs, CPU only)")
    parser.add_argument("--binary", default="bidense")
    parser.add_argument("--float", dest="float_", default="fp32_0")
    parser.add_argument("--models", nargs="+", default=["upernet", "dpt"])
    parser.add_argument("--compile", action="store_true",
                        help="compile both models (torch.compile); the first warm-up step compiles")
    add_allocator_argument(parser)
    args = parser.parse_args()
    if args.compile and args.warmup < 1:
        parser.error("--compile needs --warmup 1 or more (the first step compiles)")
    global clock
    clock = CLOCKS[args.clock]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: no CUDA GPU is visible on this machine")
    torch.set_num_threads(args.threads)
    allocator = apply_allocator(args)

    what = "training step (forward, CE, backward, AdamW)" if args.mode == "train" else "evaluation forward"
    memory = ("peak MB (max_memory_allocated)" if device.type == "cuda" else
              "not measured when compiled" if args.compile else
              "saved-for-backward MB" if args.mode == "train" else "eval-cache MB")
    print(f"{what}, batch {args.batch} at {args.size}x{args.size}, {device}, precision {args.precision}, "
          f"{args.threads} threads, {args.clock} clock, torch {torch.__version__}, {allocator}, "
          f"{dab_passes_name(device)}, "
          f"{'compiled, ' if args.compile else ''}median of {args.steps} after {args.warmup} warm-up")
    print(f"memory column: {memory}")
    header = (f"{'model':<9}{args.binary + ' s':>12}{args.float_ + ' s':>12}{'ratio':>8} | {'img/s':>7}"
              f"{'img/s':>7} | {'memory':>8}{'memory':>8}")
    print(header)
    print(f"{'':<9}{'':>12}{'':>12}{'':>8} | {args.binary[:7]:>7}{args.float_[:7]:>7} | "
          f"{args.binary[:7]:>8}{args.float_[:7]:>8}")
    for model_type in args.models:
        if model_type not in models.list_models():
            print(f"{model_type:<9}  (not registered)")
            continue
        res = bench_pair(model_type, (args.binary, args.float_), args.mode, args.steps, args.warmup, args.batch,
                         args.size, device, args.precision, args.compile)
        (tb, mb), (tf, mf) = res[args.binary], res[args.float_]
        print(f"{model_type:<9}{tb:>12.3f}{tf:>12.3f}{tb / tf:>7.2f}x | {args.batch / tb:>7.2f}"
              f"{args.batch / tf:>7.2f} | {mb / 2**20:>8.1f}{mf / 2**20:>8.1f}")


if __name__ == "__main__":
    main()
