"""Functional core of BiDense (arXiv 2411.10346): the sign with its straight-through estimators (one function for
every binarizer), the Distribution-adaptive Binarizer (DAB), binary weights, the Channel-adaptive Full-precision
Bypass (CFB), and the fused BiDense unit (DAB -> binary conv [-> BatchNorm -> + CFB]).

Where the paper leaves a detail open (granularity of the statistics, the weight binarizer, the CFB channel mapping)
the functions follow the authors' released code; the README section "Where this implementation differs from the
released code, and why" lists the deviations.

Every function here is a `torch.autograd.Function` that saves only what its backward needs: the DAB and the fused
functions keep the real-valued input plus per-(sample, channel) statistics and rebuild the binary input in
backward (so a BiDense unit saves what a float conv + BN saves); the CFB saves nothing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from binary import native

_Dims = int | Sequence[int]


def _dims(x: Tensor, dim: _Dims) -> tuple[int, ...]:
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % x.dim() for d in dims)


def _approx_sign_grad_(s: Tensor) -> Tensor:
    """In place: s -> dF/ds = max(0, 2 - 2|s|), the Bi-Real ApproxSign derivative."""
    return s.abs_().mul_(-2.0).add_(2.0).clamp_(min=0.0)


@dataclass(frozen=True)
class ClippedSTE:
    """Clipped straight-through estimator: ``d sign(x)/dx ~ 1[|x| <= 1]`` (``closed=True``) or ``1[|x| < 1]``
    (``closed=False``). ``closed`` sets the gradient at the boundary ``|x| == 1`` exactly: 1 when closed, 0 when
    open. Saves a boolean mask only."""

    closed: bool = True

    def save(self, x: Tensor) -> Tensor:
        return x.abs() <= 1 if self.closed else x.abs() < 1

    def grad(self, grad: Tensor, inside: Tensor) -> Tensor:
        return grad * inside


@dataclass(frozen=True)
class ApproxSignSTE:
    """Bi-Real Net's ApproxSign estimator (arXiv 1808.00278): ``d sign(x)/dx ~ max(0, 2 - 2|x|)``, the derivative
    of the piecewise quadratic F (``2 + 2x`` on [-1, 0), ``2 - 2x`` on [0, 1), 0 elsewhere; 0 at ``|x| == 1``).
    Saves x."""

    def save(self, x: Tensor) -> Tensor:
        return x

    def grad(self, grad: Tensor, x: Tensor) -> Tensor:
        return grad * _approx_sign_grad_(x.clone())


@dataclass(frozen=True)
class ErrorDecaySTE:
    """IR-Net's error-decay estimator (arXiv 1909.10788) with fixed constants:
    ``d sign(x)/dx ~ k * t * (1 - tanh^2(t * x))``. Saves x."""

    k: float
    t: float

    def save(self, x: Tensor) -> Tensor:
        return x

    def grad(self, grad: Tensor, x: Tensor) -> Tensor:
        return grad * (self.k * self.t) * (1 - torch.tanh(x * self.t).square())


SignEstimator = ClippedSTE | ApproxSignSTE | ErrorDecaySTE
# The two boundary conventions of the authors' clipped STEs, written as explicit masks so that they do not depend
# on the installed torch (README, "Where this implementation differs ...": STE boundary):
# CLIPPED: gradient where |x| <= 1, what their ``sign(x).detach() - clamp(x, -1, 1).detach() + clamp(x, -1, 1)``
#   trick computed under torch 2.1.2 (its clamp backward passes the gradient at the bounds);
# CLIPPED_OPEN: gradient where |x| < 1, their explicit-mask quantizers (``grad[x >= 1] = 0; grad[x <= -1] = 0``),
#   the BiViT layers and BiBERT's attention.
CLIPPED = ClippedSTE(closed=True)
CLIPPED_OPEN = ClippedSTE(closed=False)
APPROX_SIGN = ApproxSignSTE()


class _SignSTE(Function):
    @staticmethod
    def forward(ctx, x: Tensor, estimator: SignEstimator, unsigned: bool, scale: Tensor | None) -> Tensor:
        ctx.estimator = estimator
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(estimator.save(x))
        out = (x > 0).to(x.dtype) if unsigned else torch.sign(x)
        return out if scale is None else out * scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        (saved,) = ctx.saved_tensors
        return ctx.estimator.grad(grad, saved), None, None, None


def sign_ste(x: Tensor, estimator: SignEstimator = CLIPPED, *, unsigned: bool = False,
             scale: Tensor | None = None) -> Tensor:
    """Sign in the forward pass, a surrogate derivative in the backward pass: the one sign function of every
    binarizer here.

    Forward: ``sign(x)`` in {-1, 0, 1} (0 at 0, as `torch.sign`), or with ``unsigned=True`` ``1[x > 0]`` in {0, 1}
    (BiBERT's bool(.)); then times ``scale`` when given. Backward: ``dL/dx = g * d(x)`` with ``d`` the
    ``estimator``'s surrogate derivative (`ClippedSTE`, `ApproxSignSTE` or `ErrorDecaySTE`). ``scale`` is a
    forward-only factor: it does not multiply the gradient and gets none (BiBERT's weights).
    """
    return _SignSTE.apply(x, estimator, unsigned, scale)


def approx_sign(x: Tensor) -> Tensor:
    """ApproxSign of Bi-Real Net (arXiv 1808.00278), the DAB's sign: ``sign_ste(x, APPROX_SIGN)``.

    Forward ``torch.sign(x)`` (0 at 0, as the released code); backward the derivative of the piecewise quadratic
    F: ``2 + 2x`` on [-1, 0), ``2 - 2x`` on [0, 1), 0 elsewhere, i.e. ``max(0, 2 - 2|x|)``.
    """
    return _SignSTE.apply(x, APPROX_SIGN, False, None)


def _stat_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the DAB statistics and of the binary input: float32 for a bfloat16 / float16 input (README,
    "Speed": mixed precision), the input's own dtype otherwise."""
    return torch.promote_types(x.dtype, torch.float32)


def _dab_stats(x: Tensor, k: Tensor, b: Tensor, a: Tensor, dims: tuple[int, ...]):
    """Forward of the DAB. Returns (binary output, mean, beta, alpha, mean|s|)."""
    n = 1
    for d in dims:
        n *= x.shape[d]
    mean = x.mean(dims, keepdim=True, dtype=_stat_dtype(x))
    beta = k * mean + b
    s = x - beta
    out = torch.sign(s)
    mad = s.mul_(out).sum(dims, keepdim=True).div_(n)  # s * sign(s) = |s|
    del s
    alpha = torch.exp(a * (mad - 1.0))
    return out.mul_(alpha), mean, beta, alpha, mad


def _dab_backward(grad: Tensor, s: Tensor, mean: Tensor, alpha: Tensor, mad: Tensor, dims: tuple[int, ...],
                  sign_dot: Tensor | None, shapes: tuple, needs: Sequence[bool]):
    """Backward of the DAB given dL/d(output) ``grad`` and ``s = x - beta`` (both consumed in place).

    ``sign_dot`` is sum over ``dims`` of grad * sign(s) (computed by the caller when it has the binary tensor).
    """
    k_shape, b_shape, a_shape = shapes
    ga = None
    if needs[3]:
        if sign_dot is None:
            sign_dot = (grad * torch.sign(s)).sum(dims, keepdim=True)
        ga = (sign_dot * alpha * (mad - 1.0)).sum_to_size(a_shape)
    gs = grad.mul_(s.abs_().sub_(1.0).clamp_(max=0.0)).mul_(-2.0 * alpha)  # g * alpha * 2 * max(0, 1 - |s|)
    gk = gb = None
    if needs[1] or needs[2]:
        per_stat = gs.sum(dims, keepdim=True)
        if needs[1]:
            gk = (per_stat * mean).neg_().sum_to_size(k_shape)
        if needs[2]:
            gb = per_stat.neg().sum_to_size(b_shape)
    return (gs if needs[0] else None), gk, gb, ga


class _DAB(Function):
    @staticmethod
    def forward(ctx, x: Tensor, k: Tensor, b: Tensor, a: Tensor, dims: tuple[int, ...]) -> Tensor:
        out, mean, beta, alpha, mad = _dab_stats(x, k, b, a, dims)
        ctx.save_for_backward(x, mean, beta, alpha, mad)
        ctx.dims = dims
        ctx.shapes = (k.shape, b.shape, a.shape)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, mean, beta, alpha, mad = ctx.saved_tensors
        grads = _dab_backward(grad.clone(), x - beta, mean, alpha, mad, ctx.dims, None, ctx.shapes,
                              ctx.needs_input_grad[:4])
        return (*grads, None)


def dab(x: Tensor, k: Tensor, b: Tensor, a: Tensor, dim: _Dims) -> Tensor:
    """Distribution-adaptive Binarizer (DAB) of arXiv 2411.10346: ``B_x = Sign(x - beta(x))`` with
    ``beta(x) = k * mean(x) + b`` and the scale ``alpha(s) = exp(a * (||s||_1 / n_s - 1))``.

    With statistics per sample and per channel over ``dim`` (``(2, 3)`` for NCHW, ``1`` for B x N x C tokens)::

        beta  = k * mean(x) + b            s = x - beta
        alpha = exp(a * (mean|s| - 1))     out = alpha * ApproxSign(s)

    ``mean(x)`` and ``mean|s|`` are computed on the detached input, so x gets gradient only through s
    (dL/dx = g * alpha * max(0, 2 - 2|s|)); k gets ``-sum(g_s * mean(x))``, b ``-sum(g_s)`` and a
    ``sum(g * sign(s) * alpha * (mean|s| - 1))``. ``k``, ``b``, ``a`` broadcast against the statistics
    (shape (1, C, 1, 1) for NCHW, (1, 1, C) for tokens). Saves x and the per-(sample, channel) statistics.
    The granularity, the detached statistics and the ApproxSign backward are the released code's; the token
    layout keeps the paper's "- 1" (README, "Where this implementation differs ...": DAB on tokens).
    """
    return _DAB.apply(x, k, b, a, _dims(x, dim))


def _weight_scale(w: Tensor, w_abs: Tensor | None = None) -> Tensor:
    """mean|w| over all dims but the first, computed as the released code computes it (torch's mean of |w|), so
    the scale is bit for bit the released one and a packed file can rebuild it exactly. ``w_abs``: ``|w|`` when
    the caller has it."""
    return (w.abs() if w_abs is None else w_abs).mean(dim=tuple(range(1, w.dim())), keepdim=True)


def _clip_grad_(grad: Tensor, w: Tensor) -> Tensor:
    """In place: ``grad * 1[|w| <= 1]`` (the clipped STE, boundary included) in one pass: hardtanh's backward
    passes the gradient on the open interval (lo, hi), here with hi = 1 + eps, the next representable value above
    1 in w's dtype."""
    hi = 1.0 + torch.finfo(w.dtype).eps
    return torch.ops.aten.hardtanh_backward.grad_input(grad, w, -hi, hi, grad_input=grad)


class _CenteredBinaryWeight(Function):
    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        w = w - w.mean(-1, keepdim=True)
        return torch.sign(w).mul_(_weight_scale(w))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        wc = w - w.mean(-1, keepdim=True)
        g = grad * (wc.abs() <= 1.0)
        return g - g.mean(-1, keepdim=True)


def binarize_weight(w: Tensor) -> Tensor:
    """Binary weights as the released code binarizes them (XNOR-Net's scale, arXiv 1603.05279):
    ``gamma * sign(w)`` with ``gamma_o = mean|w[o]|`` over all dims but the first (per output channel of a conv
    weight; per *input* channel of a transposed-conv weight [C_in, C_out/groups, k, k], as released: README,
    "Where this implementation differs ...", transposed-conv weight scale). gamma is detached and does not scale
    the gradient; clipped STE: ``dL/dw = g * 1[|w| <= 1]``, i.e. ``sign_ste(w, CLIPPED, scale=gamma)``."""
    return _SignSTE.apply(w, CLIPPED, False, _weight_scale(w.detach()))


def binarize_weight_centered(w: Tensor) -> Tensor:
    """Row-centred binary weights of the linear layers, as released: ``wc = w - mean_row(w)``,
    ``gamma_o * sign(wc)`` with ``gamma_o = mean|wc[o]|`` (detached). The clipped STE acts on wc and the gradient
    flows back through the centring: ``h = g * 1[|wc| <= 1]``, ``dL/dw = h - mean_row(h)``. Saves w only."""
    return _CenteredBinaryWeight.apply(w)


def _cfb_plan(c_in: int, c_out: int) -> tuple[int, int, int, int]:
    """(r, m, g, R) of the CFB: r tiles, m merged channels, strided groups of g over the first R inputs."""
    r, m = divmod(c_out, c_in)
    g = c_in // m if m else 0
    return r, m, g, g * (m - 1) if m else 0


def _cfb_into(out: Tensor, x: Tensor, accumulate: bool) -> None:
    """Write (or add) CFB(x) into ``out``; both with channels on dim 1."""
    c_in, c_out = x.shape[1], out.shape[1]
    r, m, g, big_r = _cfb_plan(c_in, c_out)
    put = Tensor.add_ if accumulate else Tensor.copy_
    if r:
        put(out.narrow(1, 0, r * c_in).unflatten(1, (r, c_in)), x.unsqueeze(1))
    if m > 1:
        put(out.narrow(1, r * c_in, m - 1), x.narrow(1, 0, big_r).unflatten(1, (g, m - 1)).mean(1))
    if m:
        put(out.narrow(1, c_out - 1, 1), x.narrow(1, big_r, c_in - big_r).mean(1, keepdim=True))


def _cfb_transpose(grad: Tensor, gx: Tensor, accumulate: bool = False) -> Tensor:
    """The adjoint of the CFB: write (or add) dL/dx into ``gx`` (channels on dim 1) from dL/d(CFB(x)) ``grad``."""
    c_in, c_out = gx.shape[1], grad.shape[1]
    r, m, g, big_r = _cfb_plan(c_in, c_out)
    if r and accumulate:
        for t in range(r):
            gx.add_(grad.narrow(1, t * c_in, c_in))
    elif r == 1:
        gx.copy_(grad.narrow(1, 0, c_in))
    elif r > 1:
        torch.sum(grad.narrow(1, 0, r * c_in).unflatten(1, (r, c_in)), 1, out=gx)
    put = Tensor.add_ if r or accumulate else Tensor.copy_
    if m > 1:
        put(gx.narrow(1, 0, big_r).unflatten(1, (g, m - 1)), grad.narrow(1, r * c_in, m - 1).unsqueeze(1) / g)
    if m:
        put(gx.narrow(1, big_r, c_in - big_r), grad.narrow(1, c_out - 1, 1) / (c_in - big_r))
    return gx


def _grad_like(shape: torch.Size, grad: Tensor) -> Tensor:
    return torch.empty(shape, dtype=grad.dtype, device=grad.device)


class _CFB(Function):
    @staticmethod
    def forward(ctx, x: Tensor, out_channels: int, dim: int) -> Tensor:
        ctx.in_shape, ctx.dim = x.shape, dim
        shape = list(x.shape)
        shape[dim] = out_channels
        out = x.new_empty(shape)
        _cfb_into(out.movedim(dim, 1), x.movedim(dim, 1), accumulate=False)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        gx = _grad_like(ctx.in_shape, grad)
        _cfb_transpose(grad.movedim(ctx.dim, 1), gx.movedim(ctx.dim, 1))
        return gx, None, None


class _AddCFB(Function):
    @staticmethod
    def forward(ctx, y: Tensor, x: Tensor, dim: int) -> Tensor:
        ctx.in_shape, ctx.dim = x.shape, dim
        ctx.mark_dirty(y)
        _cfb_into(y.movedim(dim, 1), x.movedim(dim, 1), accumulate=True)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not ctx.needs_input_grad[1]:
            return grad, None, None
        if ctx.in_shape == grad.shape:
            return grad, grad, None
        gx = _grad_like(ctx.in_shape, grad)
        _cfb_transpose(grad.movedim(ctx.dim, 1), gx.movedim(ctx.dim, 1))
        return grad, gx, None


def channel_adaptive_bypass(x: Tensor, out_channels: int, dim: int = 1) -> Tensor:
    """Channel-adaptive Full-precision Bypass (CFB) of arXiv 2411.10346, with the released code's channel mapping;
    parameter-free.

    With ``C = C_in`` channels on ``dim``, ``r = C_out // C``, ``m = C_out % C``, ``g = C // m``, ``R = g(m-1)``,
    the output channels are, in order:

    - ``r`` tiles of x: channel ``t*C + c`` is ``x_c``;
    - ``m - 1`` strided means: merged channel ``j`` is ``(1/g) * sum_{i<g} x_{i(m-1)+j}``;
    - one tail mean: ``mean(x_R, ..., x_{C-1})`` (for ``m == 1`` that is the mean of all inputs, where the
      released code raises: README, "Where this implementation differs ...", CFB with C_out = C_in + 1).

    The same mapping serves NCHW (``dim=1``) and token tensors B x N x C (``dim=-1``).
    """
    if out_channels == x.shape[dim]:
        return x
    return _CFB.apply(x, out_channels, dim % x.dim())


def add_channel_adaptive_bypass_(y: Tensor, x: Tensor, dim: int = 1) -> Tensor:
    """``y + CFB(x, y.shape[dim])`` computed in place in ``y`` (``y`` must be a fresh intermediate result that
    nothing saved for backward, e.g. a BatchNorm or LayerNorm output). Avoids materialising the bypass."""
    if y.shape[:dim % y.dim()] != x.shape[:dim % x.dim()] or y.shape[dim % y.dim() + 1:] != x.shape[
            dim % x.dim() + 1:]:
        raise ValueError(f"CFB needs the same non-channel shape: conv output {tuple(y.shape)} vs input "
                         f"{tuple(x.shape)} (use a resampling bypass for strided layers)")
    return _AddCFB.apply(y, x, dim % y.dim())


class _BlockMean(Function):
    @staticmethod
    def forward(ctx, x: Tensor, k: int) -> Tensor:
        ctx.k = k
        n, c, h, w = x.shape
        blocks = x.view(n, c, h // k, k, w // k, k)
        out = blocks[:, :, :, 0, :, 0].clone()
        for i in range(k):
            for j in range(k):
                if i or j:
                    out.add_(blocks[:, :, :, i, :, j])
        return out.div_(k * k)

    @staticmethod
    def backward(ctx, grad: Tensor):
        k = ctx.k
        n, c, h, w = grad.shape
        return (grad / (k * k)).view(n, c, h, 1, w, 1).expand(n, c, h, k, w, k).reshape(n, c, h * k, w * k), None


def avg_pool_bypass(x: Tensor, kernel_size: int, stride: int, padding: int = 0) -> Tensor:
    """``F.avg_pool2d(x, kernel_size, stride, padding)``, the resampling of the strided units' bypass, as released.
    Where the windows tile the input (``kernel_size == stride``, no padding, sizes divisible: the ConvNeXt
    transitions) and x is float32 / float64, it is computed as strided adds in avg_pool2d's order (row by row
    within a window, then one division), so bit for bit as avg_pool2d on the CPU, and about three times faster
    there in forward and twice in backward (whose gradient is ``g / k^2`` spread over each window). Half-precision
    inputs keep avg_pool2d, which sums them in float32, and so does `torch.compile`, which generates its own."""
    h, w = x.shape[-2:]
    tiles = x.dim() == 4 and kernel_size == stride and not padding and not h % stride and not w % stride
    if not tiles or x.dtype not in (torch.float32, torch.float64) or torch.compiler.is_compiling():
        return torch.nn.functional.avg_pool2d(x, kernel_size, stride, padding)
    return _BlockMean.apply(x, kernel_size)


class _ShiftPReLU(Function):
    @staticmethod
    def forward(ctx, x: Tensor, shift_in: Tensor, slope: Tensor, shift_out: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, shift_in, slope)
        ctx.out_shape = None if shift_out is None else shift_out.shape
        return native.shift_prelu_forward(x, shift_in, slope, shift_out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, shift_in, slope = ctx.saved_tensors
        gx, g_in, g_slope, g_out = native.shift_prelu_backward(grad.contiguous(), x, shift_in, slope,
                                                               ctx.out_shape is not None)
        return (gx, g_in.sum(0).view(shift_in.shape), g_slope.sum(0).view(slope.shape),
                None if g_out is None else g_out.sum(0).view(ctx.out_shape))


def shift_prelu(x: Tensor, shift_in: Tensor, slope: Tensor, shift_out: Tensor | None = None) -> Tensor:
    """``prelu(x + b1, w) [+ b2]`` with per-channel ``b1`` = ``shift_in``, ``w`` = ``slope``, ``b2`` = ``shift_out``
    on dim 1: ReActNet's LearnableBias -> PReLU [-> LearnableBias] (RPReLU, arXiv 2003.03488), the activation after
    the released binary units. On contiguous float32 / float64 CPU tensors outside autocast it is one autograd
    Function whose native kernels (`binary.native`) make one pass in forward and one in backward, with the same
    values and the same dL/dx as the ops, and parameter gradients that differ from theirs by the rounding of the
    sums; it saves x where the ops save x + b1. Elsewhere it runs the ops: ``x + b1``, `F.prelu`, ``+ b2``."""
    params = (shift_in, slope) if shift_out is None else (shift_in, slope, shift_out)
    if not torch.is_autocast_enabled(x.device.type) and native.usable(x, *params):
        return _ShiftPReLU.apply(x, shift_in, slope, shift_out)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = F.prelu(x + shift_in.view(shape), slope)
    return y if shift_out is None else y + shift_out.view(shape)


class _Workspace(threading.local):
    """Per-thread scratch memory of the fused NCHW units: one growing buffer per (slot, dtype, device), the slots
    being the binary input and the binary weight. Both live only inside one call (built, convolved, then dropped
    in forward; rebuilt, used and consumed in backward), so reusing their memory is safe; on the CPU it saves
    mapping (and page-faulting) fresh pages for every large tensor, which costs more than the pass that fills them.
    Accelerators have caching allocators: there every request is a plain `torch.empty`."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    def take(self, slot: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of ``shape``, valid until the next `take` of ``slot`` on this thread (a fresh
        one on an accelerator and under `torch.compile`, whose compiler plans the memory itself)."""
        if device.type != "cpu" or torch.compiler.is_compiling():
            return torch.empty(shape, dtype=dtype, device=device)
        numel = math.prod(shape)
        key = (slot, dtype, device)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            self.buffers.pop(key, None)
            with torch.inference_mode(False):
                buffer = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[key] = buffer
        return buffer[:numel].view(shape)


_WORKSPACE = _Workspace()
_BLOCK_ELEMENTS = 1 << 17  # elements per thread of a cache block of the fused NCHW passes (512 KiB of float32)


def _block_rows(x: Tensor, rows: int, row_len: int) -> int:
    """Rows per block of the fused DAB passes. On the CPU the chain of elementwise ops runs block by block, about
    `_BLOCK_ELEMENTS` elements per thread, so that each pass re-reads the cores' caches, not memory (on this
    2-core machine, one or two threads, the DAB forward and backward of a 128 x 480 x 480 input took a third less
    time than on the whole tensor, and blocks 4 times larger kept half of that). On an accelerator every op is one
    kernel launch, and under `torch.compile` the compiler fuses the passes itself, so there the whole tensor is one
    block."""
    if torch.compiler.is_compiling() or x.device.type != "cpu":
        return max(rows, 1)
    return min(max(rows, 1), max(1, _BLOCK_ELEMENTS * torch.get_num_threads() // max(row_len, 1)))


def _blocks(x: Tensor, rows: int, row_len: int):
    """Row ranges of `_block_rows` rows covering ``rows``."""
    step = _block_rows(x, rows, row_len)
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def _dab_forward_nchw(x: Tensor, k: Tensor, b: Tensor, a: Tensor):
    """`_dab_stats` over (2, 3) for a contiguous NCHW tensor, blocked over (sample, channel) rows: mean(x);
    |x - beta| and its sum; sign(x - beta) * alpha written over it. (The sum of |s| written out is faster than
    torch's 1-norm reduction, several times so for short rows, and recomputing s costs one pass.) Statistics and
    the binary input are in `_stat_dtype` (float32 for a bfloat16 input); the binary input is workspace memory
    (`_Workspace.take`). Contiguous float32 / float64 CPU tensors go to the native kernels (`binary.native`)."""
    if native.usable(x, k, b, a):
        return native.dab_forward(x, k, b, a, _WORKSPACE.take("input", x.shape, x.dtype, x.device))
    n, c = x.shape[:2]
    xr = x.view(n * c, -1)
    hw = xr.shape[1]
    mean = xr.mean(1, keepdim=True, dtype=_stat_dtype(x))
    beta = (k.reshape(1, c) * mean.view(n, c) + b.reshape(1, c)).reshape(n * c, 1)
    a_rows = a.reshape(1, c).expand(n, c).reshape(n * c, 1)
    out = _WORKSPACE.take("input", xr.shape, mean.dtype, x.device)
    mad = torch.empty_like(mean)
    alpha = torch.empty_like(mean)
    for i, j in _blocks(x, n * c, hw):
        o = torch.sub(xr[i:j], beta[i:j], out=out[i:j]).abs_()
        torch.sum(o, 1, keepdim=True, out=mad[i:j])
        torch.exp(a_rows[i:j] * (mad[i:j].div_(hw) - 1.0), out=alpha[i:j])
        torch.sub(xr[i:j], beta[i:j], out=o).sign_().mul_(alpha[i:j])
    stat = (n, c, 1, 1)
    return out.view(x.shape), mean.view(stat), beta.view(stat), alpha.view(stat), mad.view(stat)


def _dab_input_nchw(x: Tensor, beta: Tensor, alpha: Tensor) -> Tensor:
    """Rebuild the binary input alpha * sign(x - beta) of a contiguous NCHW tensor, block by block, in the dtype of
    the statistics and in workspace memory (`_Workspace.take`); natively where `_dab_forward_nchw` is."""
    if beta.dtype == x.dtype and native.usable(x):
        return native.dab_binary_input(x, beta, alpha, _WORKSPACE.take("input", x.shape, x.dtype, x.device))
    xr = x.view(beta.numel(), -1)
    beta_r, alpha_r = beta.view(-1, 1), alpha.view(-1, 1)
    out = _WORKSPACE.take("input", xr.shape, beta.dtype, x.device)
    for i, j in _blocks(x, *xr.shape):
        torch.sub(xr[i:j], beta_r[i:j], out=out[i:j]).sign_().mul_(alpha_r[i:j])
    return out.view(x.shape)


def _dab_backward_nchw(gxb: Tensor, xb: Tensor, x: Tensor, mean: Tensor, beta: Tensor, alpha: Tensor, mad: Tensor,
                       shapes: tuple, needs: Sequence[bool], bypass_grad: Tensor | None = None):
    """`_dab_backward` for contiguous NCHW tensors, block by block (natively where `_dab_forward_nchw` is);
    consumes ``gxb`` (becomes dL/dx) and ``xb``. ``bypass_grad``: the unit's output gradient, whose CFB adjoint is
    added to dL/dx (in the same pass natively)."""
    k_shape, b_shape, a_shape = shapes
    if gxb.dtype == beta.dtype == x.dtype and gxb.is_contiguous() and native.usable(x):
        fused = bypass_grad is not None and native.takes_bypass_grad(bypass_grad, x)
        gxb, sign_dot, per_stat = native.dab_backward(gxb, x, beta, alpha, needs[3], bypass_grad if fused else None)
        if fused:
            bypass_grad = None
    else:
        sign_dot, per_stat = _dab_backward_blocks(gxb, xb, x, beta, alpha, needs[3])
    if bypass_grad is not None:
        _cfb_transpose(bypass_grad, gxb, accumulate=True)
    per_stat = per_stat.view_as(beta)
    ga = (sign_dot.view_as(alpha) * (mad - 1.0)).sum_to_size(a_shape) if needs[3] else None
    gk = (per_stat * mean).neg_().sum_to_size(k_shape) if needs[1] else None
    gb = per_stat.neg().sum_to_size(b_shape) if needs[2] else None
    return gxb, gk, gb, ga


def _dab_backward_blocks(gxb: Tensor, xb: Tensor, x: Tensor, beta: Tensor, alpha: Tensor,
                         need_sign_dot: bool) -> tuple[Tensor, Tensor]:
    """The PyTorch passes of `_dab_backward_nchw`: ``gxb`` becomes dL/dx in place; returns the per-row sums of
    gxb * xb and of dL/dx."""
    rows = beta.numel()
    gr, xbr, xr = gxb.view(rows, -1), xb.view(rows, -1), x.view(rows, -1)
    beta_r, scale = beta.view(-1, 1), (-2.0 * alpha).view(-1, 1)
    sign_dot, per_stat = torch.empty_like(beta_r), torch.empty_like(beta_r)
    for i, j in _blocks(x, *gr.shape):
        g, o = gr[i:j], xbr[i:j]
        if need_sign_dot:
            torch.sum(o.mul_(g), 1, keepdim=True, out=sign_dot[i:j])
        torch.sub(xr[i:j], beta_r[i:j], out=o).abs_().sub_(1.0).clamp_(max=0.0)
        g.mul_(o).mul_(scale[i:j])  # g * alpha * 2 * max(0, 1 - |s|)
        torch.sum(g, 1, keepdim=True, out=per_stat[i:j])
    return sign_dot, per_stat


def conv_weight_and_scale(weight: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(gamma * sign(W), gamma)`` with ``gamma = mean|W|`` over all dims but the first: the forward value of
    `binarize_weight` without autograd, and its scale. ``|W|`` is written where ``sign(W)`` then goes: into
    ``out`` when given (the fused units pass workspace memory), else into one new tensor."""
    weight = weight.detach()
    out = torch.abs(weight, out=out)
    scale = _weight_scale(weight, out)
    return torch.sign(weight, out=out).mul_(scale), scale


def _workspace_weight(weight: Tensor) -> Tensor:
    """Workspace memory for a binary weight of ``weight``'s shape (`_Workspace.take`)."""
    return _WORKSPACE.take("weight", weight.shape, weight.dtype, weight.device)


def conv_weight(weight: Tensor) -> Tensor:
    """``gamma * sign(W)`` (`conv_weight_and_scale`): the fused units' binary weight, and the tensor the layers
    cache in eval mode."""
    return conv_weight_and_scale(weight)[0]


def compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the fused units convolve in: the autocast dtype of ``x``'s device when autocast is on there
    (``TRAINING.PRECISION bf16-mixed``), else the weight's dtype (README, "Speed": mixed precision)."""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def _without_autocast(x: Tensor):
    """The fused functions choose their dtypes themselves (`compute_dtype`): autocast is off inside them."""
    return torch.autocast(x.device.type, enabled=False)


def _dab_conv_forward(x: Tensor, k: Tensor, b: Tensor, a: Tensor, wb: Tensor, bias: Tensor | None, conv: tuple,
                      dtype: torch.dtype):
    """conv(dab(x), wb) + bias in ``dtype``; returns (conv output, mean, beta, alpha, mean|s|)."""
    xb, mean, beta, alpha, mad = _dab_forward_nchw(x, k, b, a)
    z = torch.ops.aten.convolution(xb.to(dtype), wb.to(dtype), _cast(bias, dtype), *conv)
    return z, mean, beta, alpha, mad


def _dab_conv_backward(grad_z, x, weight, gamma, mean, beta, alpha, mad, bias_shape, conv, shapes, needs, dtype,
                       bypass_grad=None):
    """dL/d(x, k, b, a, weight, bias) of conv(dab(x), binarize_weight(weight)) + bias from dL/d(conv output).
    Rebuilds the binary input from x and the binary weight from the forward's scale ``gamma``; the convolution's
    backward runs in ``dtype``, the DAB's in the statistics' dtype. ``bypass_grad``: the gradient of a unit output
    that adds CFB(x); its adjoint is added to dL/dx."""
    need_x = any(needs[:4])
    xb = _dab_input_nchw(x, beta, alpha)
    gxb, gwb, gbias = torch.ops.aten.convolution_backward(
        grad_z.to(dtype), xb.to(dtype), torch.sign(weight, out=_workspace_weight(weight)).mul_(gamma).to(dtype),
        bias_shape, *conv,
        [need_x, needs[4], needs[5]])
    gw = _clip_grad_(gwb.to(weight.dtype), weight) if needs[4] else None
    gbias = _cast(gbias, weight.dtype)
    if not need_x:
        return None, None, None, None, gw, gbias
    gx, gk, gb, ga = _dab_backward_nchw(gxb.to(xb.dtype).contiguous(), xb, x, mean, beta, alpha, mad, shapes,
                                        needs[:4], bypass_grad)
    return gx, gk, gb, ga, gw, gbias


class _DABConv(Function):
    @staticmethod
    def forward(ctx, x, k, b, a, weight, bias, stride, padding, dilation, transposed, output_padding, groups, dtype):
        x = x.contiguous()
        conv = (stride, padding, dilation, transposed, output_padding, groups)
        with _without_autocast(x):
            wb, gamma = conv_weight_and_scale(weight, _workspace_weight(weight))
            y, mean, beta, alpha, mad = _dab_conv_forward(x, k, b, a, wb, bias, conv, dtype)
        ctx.save_for_backward(x, weight, gamma, mean, beta, alpha, mad)
        ctx.conv, ctx.dtype = conv, dtype
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.shapes = (k.shape, b.shape, a.shape)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, gamma, mean, beta, alpha, mad = ctx.saved_tensors
        needs = ctx.needs_input_grad
        with _without_autocast(x):
            gx, gk, gb, ga, gw, gbias = _dab_conv_backward(grad.contiguous(), x, weight, gamma, mean, beta, alpha, mad,
                                                           ctx.bias_shape, ctx.conv, ctx.shapes, needs[:6],
                                                           ctx.dtype)
        return _cast(gx, x.dtype) if needs[0] else None, gk, gb, ga, gw, gbias, *([None] * 7)


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check_inference(*tensors: Tensor | None) -> None:
    if _needs_grad(*tensors):
        raise ValueError("a precomputed binary_weight (evaluation cache) gives no gradients; call without it when "
                         "gradients are needed")


def dab_conv2d(x: Tensor, k: Tensor, b: Tensor, a: Tensor, weight: Tensor, bias: Tensor | None = None,
               stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1),
               groups: int = 1, transposed: bool = False, output_padding: Sequence[int] = (0, 0),
               binary_weight: Tensor | None = None) -> Tensor:
    """``conv(dab(x, k, b, a, (2, 3)), binarize_weight(weight)) + bias`` as one autograd Function.

    Same values and gradients as the composition, but saves only x, the weight, its per-row scale and
    per-(sample, channel) statistics: the binary input and weight are rebuilt in backward. ``transposed`` selects a
    transposed convolution (weight [C_in, C_out/groups, kh, kw], scale per input channel as released). Under
    autocast the convolution runs in the autocast dtype and the DAB statistics in float32 (`compute_dtype`).
    ``binary_weight``: ``conv_weight(weight)`` computed beforehand (the layers' evaluation cache); only where no
    gradient is needed (ValueError otherwise); the output is bit-identical to the one computed without it.
    """
    conv = (list(stride), list(padding), list(dilation), transposed, list(output_padding), groups)
    dtype = compute_dtype(x, weight)
    if binary_weight is None:
        return _DABConv.apply(x, k, b, a, weight, bias, *conv, dtype)
    _check_inference(x, k, b, a, weight, bias)
    with _without_autocast(x):
        return _dab_conv_forward(x.contiguous(), k, b, a, binary_weight, bias, conv, dtype)[0]


def _unit_forward(x, k, b, a, wb, bias, bn_weight, bn_bias, running_mean, running_var, bn_training, momentum, eps,
                  bypass, conv, dtype):
    """batch_norm(conv(dab(x), wb) + bias) [+ CFB(x)]; returns (output, z, mean, beta, alpha, mad, BN mean, BN
    inverse std). The one forward of the fused unit, with and without autograd."""
    z, mean, beta, alpha, mad = _dab_conv_forward(x, k, b, a, wb, bias, conv, dtype)
    out, save_mean, save_invstd = torch.ops.aten.native_batch_norm(z, bn_weight, bn_bias, running_mean, running_var,
                                                                   bn_training, momentum, eps)
    if bypass:
        _cfb_into(out, x, accumulate=True)
    return out, z, mean, beta, alpha, mad, save_mean, save_invstd


class _BiDenseUnit(Function):
    @staticmethod
    def forward(ctx, x, k, b, a, weight, bias, bn_weight, bn_bias, running_mean, running_var, bn_training, momentum,
                eps, bypass, stride, padding, dilation, transposed, output_padding, groups, dtype):
        x = x.contiguous()
        conv = (stride, padding, dilation, transposed, output_padding, groups)
        with _without_autocast(x):
            wb, gamma = conv_weight_and_scale(weight, _workspace_weight(weight))
            out, z, mean, beta, alpha, mad, save_mean, save_invstd = _unit_forward(
                x, k, b, a, wb, bias, bn_weight, bn_bias, running_mean, running_var, bn_training, momentum, eps,
                bypass, conv, dtype)
        stats = (None, None) if bn_training else (running_mean.clone(), running_var.clone())
        ctx.save_for_backward(x, weight, gamma, mean, beta, alpha, mad, z, bn_weight, save_mean, save_invstd, *stats)
        ctx.conv, ctx.bn, ctx.dtype = conv, (bn_training, eps), dtype
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.shapes, ctx.bypass = (k.shape, b.shape, a.shape), bypass
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x, weight, gamma, mean, beta, alpha, mad, z, bn_weight, save_mean, save_invstd, r_mean,
         r_var) = ctx.saved_tensors
        needs = ctx.needs_input_grad
        with _without_autocast(x):
            grad = grad.contiguous()
            gz, gbn_w, gbn_b = torch.ops.aten.native_batch_norm_backward(
                grad.to(z.dtype), z, bn_weight, r_mean, r_var, save_mean, save_invstd, *ctx.bn,
                [True, needs[6], needs[7]])
            gx, gk, gb, ga, gw, gbias = _dab_conv_backward(gz, x, weight, gamma, mean, beta, alpha, mad,
                                                           ctx.bias_shape, ctx.conv, ctx.shapes, needs[:6], ctx.dtype,
                                                           grad if ctx.bypass else None)
        rest = (gw, gbias, gbn_w, gbn_b, *([None] * 13))
        return (_cast(gx, x.dtype) if needs[0] else None), gk, gb, ga, *rest


def bidense_conv_bn(x: Tensor, k: Tensor, b: Tensor, a: Tensor, weight: Tensor, bias: Tensor | None,
                    bn_weight: Tensor | None, bn_bias: Tensor | None, running_mean: Tensor | None,
                    running_var: Tensor | None, bn_training: bool, momentum: float, eps: float, bypass: bool = True,
                    stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1),
                    groups: int = 1, transposed: bool = False, output_padding: Sequence[int] = (0, 0),
                    binary_weight: Tensor | None = None) -> Tensor:
    """The whole BiDense unit (BatchNorm after the binary conv, before the bypass, as released) as one autograd
    Function:
    ``batch_norm(conv(dab(x, k, b, a, (2, 3)), binarize_weight(weight)) + bias) [+ CFB(x, C_out)]``.

    ``batch_norm`` follows `torch.nn.functional.batch_norm` (``bn_training`` uses batch statistics and updates the
    running ones with ``momentum``). Saves x, the conv output and per-channel statistics (what a float conv + BN
    saves, plus the weight's per-row scale); the binary input and weight are rebuilt in backward and the bypass
    gradient is added in place. Under autocast the convolution runs in the autocast dtype, the DAB statistics in
    float32 and the BatchNorm with float32 statistics (`compute_dtype`). ``binary_weight`` as in `dab_conv2d`.
    """
    conv = (list(stride), list(padding), list(dilation), transposed, list(output_padding), groups)
    dtype = compute_dtype(x, weight)
    args = (bn_weight, bn_bias, running_mean, running_var, bn_training, momentum, eps, bypass)
    if binary_weight is None:
        return _BiDenseUnit.apply(x, k, b, a, weight, bias, *args, *conv, dtype)
    _check_inference(x, k, b, a, weight, bias, bn_weight, bn_bias)
    with _without_autocast(x):
        return _unit_forward(x.contiguous(), k, b, a, binary_weight, bias, *args, conv, dtype)[0]
