"""Native CPU kernels of the DAB passes and of the shifted PReLU (``binary/native_kernels.c``): built on first use
with the system's C compiler, cached, and loaded with ctypes; the fused BiDense units and the shifted PReLU
(`binary.functional`) call them for contiguous float32 / float64 CPU tensors and run the same passes as PyTorch ops
everywhere else.

PyTorch runs the DAB's statistics and sign, and the shift, PReLU and shift after a unit, as chains of elementwise
ops, one pass over memory each; the kernels read each (sample, channel) row once and keep it in cache for the rest
(README, "Speed"). Every element gets the same IEEE operations as the PyTorch ops; the per-row sums (mean, mean|s|,
the gradients of k, b and a, of the shifts and of the PReLU slopes) run over blocks of 1024 elements in 16 lanes,
added pairwise, the blocks in double, so they differ from PyTorch's cascade sums by rounding only.

The library is compiled with ``$CC`` (else ``cc`` / ``gcc``), ``-O3 -march=native -fopenmp``, into
``$BIDENSE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/bidense``, else ``~/.cache/bidense``), one file per source, CPU
and compiler, written atomically so that concurrent processes (DDP ranks) can build it at once. Where that fails
(no compiler, no OpenMP) one warning says why and the PyTorch ops run. ``BIDENSE_NATIVE_KERNELS=0`` turns the
kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("native_kernels.c")
SWITCH = "BIDENSE_NATIVE_KERNELS"
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_MIN_PARALLEL = 1 << 15  # elements below which one thread runs the pass (a parallel region costs more)


def cache_dir() -> Path:
    """Where the compiled library is kept."""
    if os.environ.get("BIDENSE_CACHE_DIR"):
        return Path(os.environ["BIDENSE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bidense"


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise OSError("no C compiler found (set CC)")
    return compiler


def _cpu_signature() -> str:
    """The machine and, on Linux, the CPU's feature flags: a library built with -march=native for one CPU is never
    loaded on another (a cache directory shared between cluster nodes)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return platform.machine() + flags


def library_path(compiler: str) -> Path:
    """The cached library's file for this source, compiler, flags and CPU."""
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), compiler.encode(), " ".join(FLAGS).encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    return cache_dir() / f"native_kernels-{key}.so"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(partial), "-lm"], capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
            raise OSError(f"{compiler} could not build {SOURCE.name}: {lines[-1]}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _load() -> ctypes.CDLL:
    compiler = _compiler()
    path = library_path(compiler)
    if not path.exists():
        _build(compiler, path)
    lib = ctypes.CDLL(str(path))
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for suffix in _SUFFIX.values():
        getattr(lib, f"dab_forward_{suffix}").argtypes = [i64, i64, i64, *[ptr] * 9, i32]
        getattr(lib, f"dab_binary_input_{suffix}").argtypes = [i64, i64, *[ptr] * 4, i32]
        getattr(lib, f"dab_backward_{suffix}").argtypes = [i64, i64, *[ptr] * 7, i64, i64, i32]
        getattr(lib, f"shift_prelu_forward_{suffix}").argtypes = [i64, i64, i64, *[ptr] * 5, i32]
        getattr(lib, f"shift_prelu_backward_{suffix}").argtypes = [i64, i64, i64, *[ptr] * 8, i32]
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (turned off by ``BIDENSE_NATIVE_KERNELS=0``, or not buildable: one warning)."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    try:
        return _load()
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        warnings.warn(f"the DAB runs as PyTorch ops, its native CPU kernels are unavailable: {error} (set "
                      f"{SWITCH}=0 to silence this)", RuntimeWarning, stacklevel=2)
        return None


def usable(x: Tensor, *per_channel: Tensor) -> bool:
    """Whether the kernels take ``x`` (a contiguous float32 / float64 CPU tensor, channels on dim 1) with the
    per-channel parameters ``per_channel`` (one value per channel, same dtype), outside `torch.compile` (whose
    compiler fuses the PyTorch ops itself)."""
    if x.device.type != "cpu" or x.dtype not in _SUFFIX or not x.is_contiguous() or x.dim() < 2 or not x.numel():
        return False
    if any(t.device != x.device or t.dtype != x.dtype or t.numel() != x.shape[1] for t in per_channel):
        return False
    return not torch.compiler.is_compiling() and library() is not None


def _threads(x: Tensor) -> int:
    return torch.get_num_threads() if x.numel() >= _MIN_PARALLEL else 1


def _p(t: Tensor | None) -> int | None:
    """The address ctypes passes for a ``c_void_p`` argument (None: NULL)."""
    return None if t is None else t.data_ptr()


def _row_sums(x: Tensor, rows: int, count: int) -> tuple[Tensor, list[int]]:
    """``count`` per-row vectors of ``rows`` elements (x's dtype) in one allocation, as a (count, rows) tensor, and
    the address of each (one allocation and no per-vector tensors: these calls run once per unit and step)."""
    sums = torch.empty(count, rows, dtype=x.dtype, device=x.device)
    start, step = sums.data_ptr(), rows * sums.element_size()
    return sums, [start + i * step for i in range(count)]


def _kernel(name: str, x: Tensor):
    """The kernel ``name`` for x's dtype."""
    return getattr(library(), f"{name}_{_SUFFIX[x.dtype]}")


def dab_forward(x: Tensor, k: Tensor, b: Tensor, a: Tensor, out: Tensor) -> tuple[Tensor, ...]:
    """The DAB forward of ``x`` (N, C, ...) written into ``out`` (x's shape and dtype): returns
    (out, mean, beta, alpha, mean|s|), the statistics of shape (N, C, 1, ...)."""
    n, c = x.shape[:2]
    stats, addresses = _row_sums(x, n * c, 4)
    params = (t.detach().contiguous() for t in (k, b, a))
    _kernel("dab_forward", x)(n, c, x.numel() // (n * c), _p(x), *map(_p, params), _p(out), *addresses, _threads(x))
    return out, *stats.view((4, n, c) + (1,) * (x.dim() - 2)).unbind(0)


def dab_binary_input(x: Tensor, beta: Tensor, alpha: Tensor, out: Tensor) -> Tensor:
    """``alpha * sign(x - beta)`` written into ``out``; ``beta``, ``alpha``: one value per (sample, channel)."""
    rows = beta.numel()
    _kernel("dab_binary_input", x)(rows, x.numel() // rows, _p(x), _p(beta.contiguous()), _p(alpha.contiguous()),
                                   _p(out), _threads(x))
    return out


def takes_bypass_grad(grad: Tensor, x: Tensor) -> bool:
    """Whether `dab_backward` can add the bypass gradient ``grad`` (the unit's output gradient) to x's."""
    return grad.dtype == x.dtype and grad.is_contiguous() and grad.shape[2:] == x.shape[2:]


def dab_backward(grad: Tensor, x: Tensor, beta: Tensor, alpha: Tensor, sign_dot: bool,
                 bypass_grad: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """The DAB backward from dL/d(binary input) ``grad`` (contiguous, x's dtype; overwritten with dL/dx):
    returns (dL/dx, per-row sum of grad * alpha * sign(x - beta) when ``sign_dot``, per-row sum of the DAB's
    dL/dx). ``bypass_grad``: the unit's output gradient (`takes_bypass_grad`), whose CFB adjoint is added to
    dL/dx after the sums (`binary.functional.channel_adaptive_bypass`)."""
    rows = beta.numel()
    sums, (per_stat_at, dot_at) = _row_sums(x, rows, 2)
    c_out = 0 if bypass_grad is None else bypass_grad.shape[1]
    _kernel("dab_backward", x)(rows, x.numel() // rows, _p(grad), _p(x), _p(beta.contiguous()),
                               _p(alpha.contiguous()), dot_at if sign_dot else None, per_stat_at, _p(bypass_grad),
                               x.shape[1], c_out, _threads(x))
    return grad, sums[1] if sign_dot else None, sums[0]


def shift_prelu_forward(x: Tensor, b1: Tensor, w: Tensor, b2: Tensor | None) -> Tensor:
    """``prelu(x + b1, w) [+ b2]`` of ``x`` (N, C, ...) with per-channel ``b1``, ``w``, ``b2``, in a new tensor."""
    n, c = x.shape[:2]
    y = torch.empty_like(x)
    params = [None if t is None else t.detach().contiguous() for t in (b1, w, b2)]
    _kernel("shift_prelu_forward", x)(n, c, x.numel() // (n * c), _p(x), *map(_p, params), _p(y), _threads(x))
    return y


def shift_prelu_backward(grad: Tensor, x: Tensor, b1: Tensor, w: Tensor, out_shift: bool
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """From dL/dy ``grad`` (contiguous, x's dtype) of `shift_prelu_forward`: (dL/dx, and per (sample, channel) row
    the sums of dL/dx, of dL/dw's terms and, when ``out_shift``, of ``grad``), the row sums of shape (N, C)."""
    n, c = x.shape[:2]
    gx = torch.empty_like(x)
    sums, (gb1_at, gw_at, gb2_at) = _row_sums(x, n * c, 3)
    _kernel("shift_prelu_backward", x)(n, c, x.numel() // (n * c), _p(grad), _p(x), _p(b1.detach().contiguous()),
                                       _p(w.detach().contiguous()), _p(gx), gb1_at, gw_at,
                                       gb2_at if out_shift else None, _threads(x))
    gb1, gw, gb2 = sums.view(3, n, c).unbind(0)
    return gx, gb1, gw, gb2 if out_shift else None
