"""What the benchmark scripts share: clocks, device synchronisation, the autocast of a precision, saved bytes, the
host allocator, which DAB passes ran."""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch import nn

from binary import native
from engine.host_allocator import keep_freed_host_memory

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of Lightning's ``precision`` ("32": none; "bf16-mixed": bfloat16)."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def saved_bytes(module: nn.Module, x: torch.Tensor, precision: str = "32") -> int:
    """Bytes of the unique non-parameter storages that autograd keeps for one training forward of ``module``."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(x.device, precision):
        out = module(x)
    del out
    return sum(storages.values())


def add_allocator_argument(parser: argparse.ArgumentParser) -> None:
    """``--default-allocator``: keep glibc's default large-allocation policy (`engine.host_allocator`)."""
    parser.add_argument("--default-allocator", action="store_true",
                        help="keep glibc's default policy for large host allocations (fresh, page-faulting pages "
                             "for every large tensor) instead of reusing freed memory as the scripts do")


def apply_allocator(args: argparse.Namespace) -> str:
    """Apply the host-allocator choice of ``args`` (`add_allocator_argument`); returns its name for the header."""
    if not args.default_allocator and keep_freed_host_memory():
        return "freed host memory reused"
    return "default host allocator"


def dab_passes_name(device: torch.device) -> str:
    """Which DAB passes the fused units run on ``device``, for the header: the native CPU kernels
    (`binary.native`; ``BIDENSE_NATIVE_KERNELS=0`` measures without them) or PyTorch ops."""
    if device.type == "cpu" and native.library() is not None:
        return "DAB in native kernels"
    return "DAB in PyTorch ops"
