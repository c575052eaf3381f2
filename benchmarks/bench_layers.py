"""Benchmark: BiDense conv units against Conv2d + BatchNorm2d of the same shape.

For every BiDenseConv2d shape of UperNet-ConvNeXt-T at a 480 x 480 input (batch 4; the two full-resolution head
convs at half the spatial size so that they run on a small CPU), prints the median forward+backward time and the
bytes saved for backward (counted with ``torch.autograd.graph.saved_tensors_hooks``, unique storages, parameters
excluded) of the BiDense unit and of the float unit, and their ratios.

    python -m benchmarks.bench_layers [--reps 5] [--threads 2] [--scale 1.0] [--only TEXT] [--no-malloc-cache]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import time

import torch
from torch import nn

from binary.layers import BiDenseConv2d, BypassDown

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


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique non-parameter storages that autograd keeps for one forward of ``module``."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    del out
    return sum(storages.values())


def step_times(modules: list[nn.Module], x: torch.Tensor, reps: int) -> list[float]:
    """Median seconds of forward + backward (input gradient included) of each module over ``reps`` runs after two
    warm-ups; the modules alternate run by run so that load from other processes hits them alike."""
    times: list[list[float]] = [[] for _ in modules]
    for i in range(reps + 2):
        for module, bucket in zip(modules, times, strict=True):
            x.grad = None
            module.zero_grad(set_to_none=True)
            start = time.perf_counter()
            out = module(x)
            out.backward(torch.ones_like(out))
            if i >= 2:
                bucket.append(time.perf_counter() - start)
            del out
    return [statistics.median(t) for t in times]


def keep_freed_memory() -> bool:
    """Ask glibc to serve big allocations from its heap and keep freed memory (a caching allocator, as on GPUs and
    as jemalloc/tcmalloc do on CPUs) instead of mapping fresh, page-faulting pages for every large tensor. Applies
    to both layers alike. Returns False where glibc is not available."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mmap_threshold, trim_threshold = -3, -1
    return bool(hasattr(libc, "mallopt") and libc.mallopt(mmap_threshold, 2**31 - 1)
                and libc.mallopt(trim_threshold, 2**31 - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per layer (after two warm-ups)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every spatial size (e.g. 0.5)")
    parser.add_argument("--only", default="", help="run only the shapes whose name contains this text")
    parser.add_argument("--no-malloc-cache", action="store_true",
                        help="keep glibc's default (page-faulting) allocation of large tensors")
    args = parser.parse_args()
    cached = not args.no_malloc_cache and keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    header = (f"{'layer':28s} {'C_in->C_out':>11s} {'k/s/g':>8s} {'HxW':>7s} | {'BiDense ms':>10s} {'float ms':>9s} "
              f"{'time x':>6s} | {'BiDense MB':>10s} {'float MB':>9s} {'mem x':>6s}")
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{'caching' if cached else 'default'} large-allocation policy, median of {args.reps} alternated runs")
    print(header)
    print("-" * len(header))
    time_ratios, mem_ratios = [], []
    for name, c_in, c_out, k, s, p, g, size in SHAPES:
        if args.only not in name:
            continue
        size = max(1, round(size * args.scale))
        x = torch.randn(args.batch, c_in, size, size, requires_grad=True)
        modules = [build(c_in, c_out, k, s, p, g).train() for build in (bidense_unit, float_unit)]
        tb, tf = step_times(modules, x, args.reps)
        mb, mf = (saved_bytes(module, x) for module in modules)
        time_ratios.append(tb / tf)
        mem_ratios.append(mb / mf)
        print(f"{name:28s} {f'{c_in}->{c_out}':>11s} {f'{k}/{s}/{g}':>8s} {f'{size}x{size}':>7s} | "
              f"{tb * 1e3:10.1f} {tf * 1e3:9.1f} {tb / tf:6.2f} | {mb / 2**20:10.1f} {mf / 2**20:9.1f} {mb / mf:6.2f}")
    print("-" * len(header))
    print(f"time ratio: median {statistics.median(time_ratios):.2f}, worst {max(time_ratios):.2f} "
          f"(targets <= 1.3, <= 2.5);  saved-memory ratio: worst {max(mem_ratios):.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
