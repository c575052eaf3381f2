"""Benchmark: BiDense conv units against Conv2d + BatchNorm2d of the same shape.

For every BiDenseConv2d shape of UperNet-ConvNeXt-T at a 480 x 480 input (batch 4; the two full-resolution head
convs at half the spatial size so that they run on a small CPU), prints the median forward+backward time and the
bytes saved for backward (counted with ``torch.autograd.graph.saved_tensors_hooks``, unique storages, parameters
excluded) of the BiDense unit and of the float unit, their ratios, images/s of the BiDense unit and, on CUDA,
its peak memory (``torch.cuda.max_memory_allocated``).

A shape whose time ratio misses the target (1.15) gets a "bound" line: the time of the DAB's elementwise passes
alone (forward statistics and binary input, its rebuild and backward in the fused unit), which no convolution
shares, and of the work on the weights alone (binary weight and scale, rebuild, gradient clipping), each as a
fraction of the float unit's time, and what is left of the difference (the bypass, fixed costs per call); where the
float convolution is cheap per input element (few output channels, 1x1 kernels, depthwise) the DAB passes alone
exceed the 15 % margin, and where it has few positions per weight (the 6 x 6 PSP stage) the weights' passes weigh in
too. The header says whether the DAB ran in the native CPU kernels (`binary.native`) or in PyTorch ops
(``BIDENSE_NATIVE_KERNELS=0``).

    python -m benchmarks.bench_layers [--reps 5] [--threads 2] [--scale 1.0] [--only TEXT] [--default-allocator]
        [--device cpu|cuda] [--precision 32|bf16-mixed] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from benchmarks.common import (
    CLOCKS,
    add_allocator_argument,
    apply_allocator,
    autocast,
    dab_passes_name,
    saved_bytes,
    sync,
)
from binary.functional import (
    _clip_grad_,
    _dab_backward_nchw,
    _dab_forward_nchw,
    _dab_input_nchw,
    _workspace_weight,
    conv_weight_and_scale,
)
from binary.layers import BiDenseConv2d, BypassDown

TARGET = 1.15

# (name, C_in, C_out, kernel, stride, padding, groups, input H = W at a 480 x 480 image)
SHAPES: list[tuple[str, int, int, int, int, int, int, int]] = [
    ("stage1 dw 7x7", 96, 96, 7, 1, 3, 96, 120),
    ("stage1 pw1", 96, 384, 1, 1, 0, 1, 120),
    ("stage1 pw2", 384, 96, 1, 1, 0, 1, 120),
    ("down 1->2 (2x2 s2)", 96, 192, 2, 2, 0, 1, 120),
    ("stage2 dw 7x7", 192, 192, 7, 1, 3, 192, 60),
    ("stage2 pw1", 192, 768, 1, 1, 0, 1, 60),
    ("stage2 pw2", 768, 192, 1, 1, 0, 1, 60),
    ("down 2->3 (2x2 s2)", 192, 384, 2, 2, 0, 1, 60),
    ("stage3 dw 7x7", 384, 384, 7, 1, 3, 384, 30),
    ("stage3 pw1", 384, 1536, 1, 1, 0, 1, 30),
    ("stage3 pw2", 1536, 384, 1, 1, 0, 1, 30),
    ("down 3->4 (2x2 s2)", 384, 768, 2, 2, 0, 1, 30),
    ("stage4 dw 7x7", 768, 768, 7, 1, 3, 768, 15),
    ("stage4 pw1", 768, 3072, 1, 1, 0, 1, 15),
    ("stage4 pw2", 3072, 768, 1, 1, 0, 1, 15),
    ("psp stage 1x1 (bin 6)", 768, 192, 1, 1, 0, 1, 6),
    ("psp bottleneck 3x3", 1536, 768, 3, 1, 1, 1, 15),
    ("fpn lateral 192", 192, 96, 1, 1, 0, 1, 60),
    ("fpn lateral 384", 384, 96, 1, 1, 0, 1, 30),
    ("fpn lateral 768", 768, 96, 1, 1, 0, 1, 15),
    ("fpn smooth 3x3 @1/4", 96, 96, 3, 1, 1, 1, 120),
    ("fpn fusion 3x3", 384, 96, 3, 1, 1, 1, 120),
    ("out_conv1 3x3", 96, 128, 3, 1, 1, 1, 120),
    ("seg head 3x3 (half size)", 128, 128, 3, 1, 1, 1, 240),
    ("depth head 3x3 (half size)", 128, 32, 3, 1, 1, 1, 240),
]


def bidense_unit(c_in: int, c_out: int, k: int, s: int, p: int, g: int) -> nn.Module:
    if s > 1:
        return BypassDown(c_in, c_out, k, s, p, groups=g)
    return BiDenseConv2d(c_in, c_out, k, s, p, groups=g)


def float_unit(c_in: int, c_out: int, k: int, s: int, p: int, g: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, p, groups=g, bias=False), nn.BatchNorm2d(c_out))


clock = time.perf_counter  # set by --clock


def step_times(modules: list, x: torch.Tensor, reps: int, precision: str = "32") -> tuple[list[float], list[int]]:
    """Median seconds of forward + backward (input gradient included) of each module (or callable of x) over
    ``reps`` runs after two warm-ups, and each one's peak CUDA memory (0 on the CPU); the modules alternate run by
    run so that load from other processes hits them alike."""
    times: list[list[float]] = [[] for _ in modules]
    peaks = [0 for _ in modules]
    for i in range(reps + 2):
        for n, (module, bucket) in enumerate(zip(modules, times, strict=True)):
            x.grad = None
            if isinstance(module, nn.Module):
                module.zero_grad(set_to_none=True)
            if x.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(x.device)
            sync(x.device)
            start = clock()
            with autocast(x.device, precision):
                out = module(x)
            if out is not None:
                out.backward(torch.ones_like(out))
            sync(x.device)
            if i >= 2:
                bucket.append(clock() - start)
                if x.device.type == "cuda":
                    peaks[n] = max(peaks[n], torch.cuda.max_memory_allocated(x.device))
            del out
    return [statistics.median(t) for t in times], peaks


def dab_passes(unit: nn.Module):
    """A callable of x running only the elementwise DAB work of ``unit``'s fused forward and backward (statistics
    and binary input; its rebuild; the DAB backward), without the convolution, BN or bypass."""
    body = unit.body if isinstance(unit, BypassDown) else unit
    dab = body.binarizer

    def run(x: torch.Tensor) -> None:
        with torch.no_grad():
            xc = x.detach().contiguous()
            xb, mean, beta, alpha, mad = _dab_forward_nchw(xc, dab.k, dab.b, dab.a)
            del xb
            xb = _dab_input_nchw(xc, beta, alpha)
            shapes = (dab.k.shape, dab.b.shape, dab.a.shape)
            _dab_backward_nchw(torch.ones_like(xb), xb, xc, mean, beta, alpha, mad, shapes, (True,) * 4)
        return None

    return run


def weight_passes(unit: nn.Module):
    """A callable of x running only the work of ``unit``'s fused forward and backward on its weights: the binary
    weight and its scale, its rebuild in backward and the clipping of the weight gradient (in place on a gradient
    made beforehand); x is not read. It is proportional to the weights, not to the input, so it weighs most where
    a layer has few positions per weight (small inputs)."""
    body = unit.body if isinstance(unit, BypassDown) else unit
    weight = body.conv.weight.detach()
    grad = torch.ones_like(weight)

    def run(x: torch.Tensor) -> None:
        with torch.no_grad():
            _, gamma = conv_weight_and_scale(weight, _workspace_weight(weight))
            torch.sign(weight, out=_workspace_weight(weight)).mul_(gamma)
            _clip_grad_(grad, weight)
        return None

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per layer (after two warm-ups)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every spatial size (e.g. 0.5)")
    parser.add_argument("--only", default="", help="run only the shapes whose name contains this text")
    add_allocator_argument(parser)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--precision", choices=("32", "bf16-mixed"), default="32")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: elapsed seconds; cpu: this process's CPU seconds (all threads; steadier on a "
                             "machine shared with other jobs, CPU only)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: no CUDA GPU is visible on this machine")
    allocator = apply_allocator(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    header = (f"{'layer':28s} {'C_in->C_out':>11s} {'k/s/g':>8s} {'HxW':>7s} | {'BiDense ms':>10s} {'float ms':>9s} "
              f"{'time x':>6s} {'img/s':>7s} | {'BiDense MB':>10s} {'float MB':>9s} {'mem x':>6s} {'peak MB':>8s}")
    print(f"batch {args.batch}, {device}, precision {args.precision}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {allocator}, {dab_passes_name(device)}, median of "
          f"{args.reps} alternated runs; MB = saved for backward; img/s and peak MB (CUDA max_memory_allocated) of "
          "the BiDense unit")
    print(header)
    print("-" * len(header))
    time_ratios, mem_ratios, bounds = [], [], []
    for name, c_in, c_out, k, s, p, g, size in SHAPES:
        if args.only not in name:
            continue
        size = max(1, round(size * args.scale))
        x = torch.randn(args.batch, c_in, size, size, device=device, requires_grad=True)
        modules = [build(c_in, c_out, k, s, p, g).to(device).train() for build in (bidense_unit, float_unit)]
        (tb, tf), (peak, _) = step_times(modules, x, args.reps, args.precision)
        mb, mf = (saved_bytes(module, x) for module in modules)
        time_ratios.append(tb / tf)
        mem_ratios.append(mb / mf)
        print(f"{name:28s} {f'{c_in}->{c_out}':>11s} {f'{k}/{s}/{g}':>8s} {f'{size}x{size}':>7s} | "
              f"{tb * 1e3:10.1f} {tf * 1e3:9.1f} {tb / tf:6.2f} {args.batch / tb:7.1f} | {mb / 2**20:10.1f} "
              f"{mf / 2**20:9.1f} {mb / mf:6.2f} {peak / 2**20:8.1f}")
        if tb / tf > TARGET:
            (td, tw, _), _ = step_times([dab_passes(modules[0]), weight_passes(modules[0]), modules[1]], x,
                                        args.reps, args.precision)
            bounds.append(f"  {name}: the DAB passes alone take {td * 1e3:.1f} ms = {td / tf:.2f} and the weights' "
                          f"sign, scale and clipping {tw * 1e3:.2f} ms = {tw / tf:.2f} of the float unit's "
                          f"{tf * 1e3:.1f} ms, so the ratio is at least {1 + (td + tw) / tf:.2f} with any conv "
                          f"({c_out} outputs x {k}x{k}/{g} per input element, {args.batch * size * size} positions "
                          f"per weight); the other {max(tb - tf - td - tw, 0.0) / tf:.2f} is the bypass and the "
                          "per-call work")
    print("-" * len(header))
    print(f"time ratio: median {statistics.median(time_ratios):.2f}, worst {max(time_ratios):.2f} "
          f"(targets <= {TARGET}, <= 1.6);  saved-memory ratio: worst {max(mem_ratios):.2f}")
    if bounds:
        print(f"bounds of the shapes over {TARGET}:")
        print("\n".join(bounds))


if __name__ == "__main__":
    main()
