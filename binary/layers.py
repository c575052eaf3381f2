"""Binary modules: the BiDense ones of arXiv 2411.10346 (the DAB, the BiDense conv / transposed conv / linear units
with their Channel-adaptive Full-precision Bypass (CFB), the resampling bypass units), and the layers the
baselines share with them (ReActNet's shifted sign, LearnableBias / RPReLU, and the binary convs).

Two families of binary layers, named by what they binarize:

* ``BinaryWeight*`` (`BinaryWeightConv2d`, `BinaryWeightConvTranspose2d`, `BinaryWeightLinear`): 1-bit weights
  only; the input arrives binary from a separate binarizer (the DAB inside a BiDense unit).
* ``BinaryConv2d`` / ``BinaryConvTranspose2d``: binarize their input (a binarizer module they hold) and their
  weights (a function they are given); the sign-based CNN baselines and the ViT baselines' decoder use them.

Where the paper leaves a detail open the modules follow the authors' released code (github.com/frickyinn/BiDense);
the README section "Where this implementation differs from the released code, and why" lists the deviations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binary.counting import BinaryLayer, shape_macs
from binary.eval_cache import EvalCache
from binary.functional import (
    add_channel_adaptive_bypass_,
    approx_sign,
    avg_pool_bypass,
    bidense_conv_bn,
    binarize_weight,
    binarize_weight_centered,
    compute_dtype,
    conv_weight,
    dab,
    dab_conv2d,
    shift_prelu,
)

WeightBinarizer = Callable[[Tensor], Tensor]


def _param_shape(channels: int, dim: int, ndim: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[dim] = channels
    return tuple(shape)


class DAB(nn.Module):
    """Distribution-adaptive Binarizer (arXiv 2411.10346, DAB equations):
    ``alpha * ApproxSign(x - (k * mean(x) + b))`` with ``alpha = exp(a * (mean|s| - 1))``, statistics per sample
    and channel (see `binary.functional.dab`).

    Args:
        channels: number of channels C.
        dim: the channel axis: 1 for NCHW (statistics over H x W; parameters (1, C, 1, 1)) or -1 for token
            tensors B x N x C (statistics over the N tokens; parameters (1, 1, C)).

    Parameters ``a``, ``k`` ~ 1e-3 * N(0, 1), ``b`` = 0.
    """

    def __init__(self, channels: int, dim: int = 1) -> None:
        super().__init__()
        if dim not in (1, -1):
            raise ValueError(f"DAB: dim must be 1 (NCHW) or -1 (tokens B x N x C), got {dim}")
        self.dim = dim
        shape = _param_shape(channels, 1, 4) if dim == 1 else _param_shape(channels, 2, 3)
        self.a = nn.Parameter(1e-3 * torch.randn(shape))
        self.k = nn.Parameter(1e-3 * torch.randn(shape))
        self.b = nn.Parameter(torch.zeros(shape))

    def stat_dims(self, x: Tensor) -> tuple[int, ...]:
        """The dims the statistics are taken over: spatial dims for NCHW, the token axis for tokens."""
        return tuple(range(2, x.dim())) if self.dim == 1 else (1,)

    def forward(self, x: Tensor) -> Tensor:
        return dab(x, self.k, self.b, self.a, self.stat_dims(x))


class ShiftSign(nn.Module):
    """ReActNet's RSign (arXiv 2003.03488) with Bi-Real's ApproxSign backward: ``ApproxSign(x + b)``, a learnable
    per-channel shift b (``move``, init 0) on the channel axis ``dim``. The input binarizer of the `react` and
    `bisrnet`-style convs, and of the `cfb` ablation's BiDense units in place of the DAB."""

    def __init__(self, channels: int, dim: int = 1) -> None:
        super().__init__()
        self.move = LearnableBias(channels, dim)

    def forward(self, x: Tensor) -> Tensor:
        return approx_sign(self.move(x))


def _input_binarizer(kind: str, channels: int, dim: int = 1) -> nn.Module:
    if kind == "dab":
        return DAB(channels, dim)
    if kind == "shift_sign":
        return ShiftSign(channels, dim)
    raise ValueError(f"unknown input binarizer {kind!r}; available: dab, shift_sign")


class _BinaryWeightCache(EvalCache):
    """The binary weight ``binarize_weight(W)`` of a conv / transposed conv, cached in eval mode (`EvalCache`)."""

    weight: Tensor

    def binary_weight(self) -> Tensor:
        """``binarize_weight(self.weight)``: with autograd in training, the cached constant in eval mode."""
        return self.eval_cached("binary_weight", lambda: binarize_weight(self.weight), self.weight)

    def fused_weight(self, dtype: torch.dtype) -> Tensor:
        """``conv_weight(self.weight)`` in ``dtype`` for the fused units' no-gradient path, cached in eval mode."""
        return self.eval_cached("fused_weight", lambda: conv_weight(self.weight).to(dtype), self.weight, tag=dtype)


class BinaryWeightConv2d(_BinaryWeightCache, BinaryLayer, nn.Conv2d):
    """Conv2d with binary weights ``mean|W_o| * sign(W)`` (per output channel, detached; clipped STE;
    `binary.functional.binarize_weight`; cached in eval mode). Its input is expected to be binary already (from a
    `DAB`). Weight init N(0, 1e-3^2), as released."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        nn.init.normal_(self.weight, std=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.binary_weight(), self.bias)


class BinaryWeightConvTranspose2d(_BinaryWeightCache, BinaryLayer, nn.ConvTranspose2d):
    """ConvTranspose2d with binary weights; its input is expected to be binary already. The weight is
    [C_in, C_out/groups, kh, kw] and the scale is mean|w| over dims 1-3, i.e. **per input channel**, as in the
    released code (README, "Where this implementation differs ...", transposed-conv weight scale).
    Init N(0, 1e-3^2)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        nn.init.normal_(self.weight, std=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.binary_weight(), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class BinaryWeightLinear(EvalCache, BinaryLayer, nn.Linear):
    """Linear layer with row-centred binary weights (`binary.functional.binarize_weight_centered`, as released;
    cached in eval mode); its input is expected to be binary already. Weight init N(0, 1e-3^2)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        nn.init.normal_(self.weight, std=1e-3)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.eval_cached("binary_weight", lambda: binarize_weight_centered(self.weight), self.weight)
        return F.linear(x, weight, self.bias)


class BinaryConv2d(EvalCache, BinaryLayer, nn.Conv2d):
    """Conv2d on a binarized input with binarized weights: ``conv(binarize_input(x), binarize_weight(W)) + bias``,
    every Conv2d argument honoured.

    ``input_binarizer`` is a module (its parameters train with the layer, under ``binarize_input``);
    ``weight_binarizer`` a function of W (its value is cached in eval mode, `binary.eval_cache`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = False, *, input_binarizer: nn.Module,
                 weight_binarizer: WeightBinarizer) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.binarize_input = input_binarizer
        self.binarize_weight = weight_binarizer

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.binarize_input(x), self.binary_weight(), self.bias)

    def binary_weight(self) -> Tensor:
        """``binarize_weight(self.weight)``, cached in eval mode."""
        return self.eval_cached("binary_weight", lambda: self.binarize_weight(self.weight), self.weight)


class BinaryConvTranspose2d(EvalCache, BinaryLayer, nn.ConvTranspose2d):
    """ConvTranspose2d on a binarized input with binarized weights (weight [C_in, C_out/g, k, k]):
    ``conv_transpose(binarize_input(x), binarize_weight(W)) + bias``; arguments as `BinaryConv2d` (weight cached in
    eval mode)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False, *, input_binarizer: nn.Module, weight_binarizer: WeightBinarizer) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.binarize_input = input_binarizer
        self.binarize_weight = weight_binarizer

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(self.binarize_input(x), self.binary_weight(), self.bias, self.stride,
                                  self.padding, self.output_padding, self.groups, self.dilation)

    def binary_weight(self) -> Tensor:
        """``binarize_weight(self.weight)``, cached in eval mode."""
        return self.eval_cached("binary_weight", lambda: self.binarize_weight(self.weight), self.weight)


class _BiDenseConvUnit(nn.Module):
    """Shared forward of the BiDense conv units: ``BN(binary_conv(DAB(x))) [+ CFB(x, C_out)]``."""

    conv: BinaryWeightConv2d | BinaryWeightConvTranspose2d

    def _conv_args(self) -> tuple:
        conv = self.conv
        transposed = isinstance(conv, nn.ConvTranspose2d)
        return (conv.stride, conv.padding, conv.dilation, conv.groups, transposed,
                conv.output_padding if transposed else (0, 0))

    def binary_macs(self, input: Tensor, output: Tensor) -> int:
        """Binary MACs of one call: those of ``self.conv`` (the fused path runs its weights without calling it;
        DAB, BN and the bypass are elementwise). Read by `binary.counting`."""
        return shape_macs(self.conv, input, output)

    def forward(self, x: Tensor) -> Tensor:
        conv, bn, dab_ = self.conv, self.norm, self.binarizer
        if not isinstance(dab_, DAB):
            y = bn(conv(dab_(x)))
        elif type(bn) is not nn.BatchNorm2d:  # e.g. SyncBatchNorm: fuse only the DAB and the conv
            y = bn(dab_conv2d(x, dab_.k, dab_.b, dab_.a, conv.weight, conv.bias, *self._conv_args(),
                              binary_weight=self._inference_weight(x)))
        else:
            if self.bypass and x.dim() == 4:
                _check_same_resolution(x, conv)
            training = bn.training or bn.running_mean is None
            momentum = 0.0 if bn.momentum is None else bn.momentum
            if bn.training and bn.track_running_stats:
                bn.num_batches_tracked.add_(1)
                if bn.momentum is None:
                    momentum = 1.0 / float(bn.num_batches_tracked)
            track = not bn.training or bn.track_running_stats
            return bidense_conv_bn(x, dab_.k, dab_.b, dab_.a, conv.weight, conv.bias, bn.weight, bn.bias,
                                   bn.running_mean if track else None, bn.running_var if track else None, training,
                                   momentum, bn.eps, self.bypass, *self._conv_args(),
                                   binary_weight=self._inference_weight(x))
        return add_channel_adaptive_bypass_(y, x) if self.bypass else y

    def _inference_weight(self, x: Tensor) -> Tensor | None:
        """The binary weight for the fused functions' no-gradient path (cached in eval mode), or None when a
        gradient may be needed (the autograd Function binarizes the weight itself)."""
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return None
        return self.conv.fused_weight(compute_dtype(x, self.conv.weight))


def _check_same_resolution(x: Tensor, conv: nn.Module) -> None:
    h, w = x.shape[-2:]
    out = []
    for size, k, s, p, d, op in zip((h, w), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                                    getattr(conv, "output_padding", (0, 0)), strict=True):
        if isinstance(conv, nn.ConvTranspose2d):
            out.append((size - 1) * s - 2 * p + d * (k - 1) + op + 1)
        else:
            out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    if tuple(out) != (h, w):
        raise ValueError(f"CFB needs the same non-channel shape: conv output {tuple(out)} vs input {(h, w)} (use a "
                         "resampling bypass for strided layers, or pad the conv)")


class BiDenseConv2d(_BiDenseConvUnit):
    """The BiDense binary conv unit: ``y = BN(BinaryWeightConv2d(DAB(x))) + CFB(x, C_out)`` (arXiv 2411.10346; the
    BatchNorm after the binary conv and before the bypass, as released).

    ``binarizer="shift_sign"`` replaces the DAB by `ShiftSign` (the `cfb` ablation).
    With the DAB and a plain BatchNorm2d the whole unit runs as one autograd Function
    (`binary.functional.bidense_conv_bn`) that saves what a float conv + BN saves (x, the conv output, per-channel
    statistics) and rebuilds the binary input in backward; with another norm (e.g. SyncBatchNorm) only the DAB and
    the conv are fused (`binary.functional.dab_conv2d`) and the norm module runs as usual. With ``bypass=False`` the
    unit returns ``BN(BinaryWeightConv2d(DAB(x)))`` and the caller adds a resampled bypass (`BypassDown`).
    A bypass needs an output of the input's resolution: ``stride > 1`` with ``bypass=True`` is an error.

    Submodules: ``binarizer`` (`DAB`), ``conv`` (`BinaryWeightConv2d`), ``norm`` (BatchNorm2d).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = False, bypass: bool = True,
                 binarizer: str = "dab") -> None:
        super().__init__()
        if bypass and stride != 1:
            raise ValueError(f"BiDenseConv2d({in_channels}, {out_channels}, stride={stride}): the CFB bypass needs "
                             "stride 1; use BypassDown for strided layers")
        self.binarizer = _input_binarizer(binarizer, in_channels)
        self.conv = BinaryWeightConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                       bias=bias)
        self.norm = nn.BatchNorm2d(out_channels)
        self.bypass = bypass


class BiDenseConvTranspose2d(_BiDenseConvUnit):
    """``BN(BinaryWeightConvTranspose2d(DAB(x))) [+ CFB(x, C_out)]``. As `BiDenseConv2d`, the
    bypass needs stride 1; `BypassUp` resamples it for ``kernel = stride = scale`` upsampling."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 output_padding: int = 0, groups: int = 1, bias: bool = False, dilation: int = 1,
                 bypass: bool = True, binarizer: str = "dab") -> None:
        super().__init__()
        if bypass and stride != 1:
            raise ValueError(f"BiDenseConvTranspose2d({in_channels}, {out_channels}, stride={stride}): the CFB "
                             "bypass needs stride 1; use BypassUp for upsampling layers")
        self.binarizer = _input_binarizer(binarizer, in_channels)
        self.conv = BinaryWeightConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding,
                                                output_padding, groups, bias=bias, dilation=dilation)
        self.norm = nn.BatchNorm2d(out_channels)
        self.bypass = bypass


class BiDenseLinear(nn.Module):
    """BiDense linear unit on tokens B x N x C: ``LayerNorm(BinaryWeightLinear(DAB(x))) + CFB(x)``, with the DAB
    over the token axis, row-centred binary weights and LayerNorm(eps=1e-6). The released layer binarized with a
    LearnableBias + ApproxSign on a path its models never take; we use the DAB (README, "Where this implementation
    differs ...": DAB on tokens)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, bypass: bool = True) -> None:
        super().__init__()
        self.binarizer = DAB(in_features, dim=-1)
        self.linear = BinaryWeightLinear(in_features, out_features, bias=bias)
        self.norm = nn.LayerNorm(out_features, eps=1e-6)
        self.bypass = bypass

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.linear(self.binarizer(x)))
        return add_channel_adaptive_bypass_(y, x, dim=-1) if self.bypass else y


class BypassDown(nn.Module):
    """Strided BiDense unit, as released: ``BiDenseConv2d(k, s, p, bypass=False)(x) + CFB(AvgPool2d(k, s, p)(x))``
    (ConvNeXt transitions k=s=2; DPT layer 4 k=3, s=2, p=1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int = 0,
                 groups: int = 1, bias: bool = False, binarizer: str = "dab") -> None:
        super().__init__()
        self.body = BiDenseConv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias,
                                  bypass=False, binarizer=binarizer)
        self.pool = nn.AvgPool2d(kernel_size, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        pool = self.pool
        return add_channel_adaptive_bypass_(self.body(x), avg_pool_bypass(x, pool.kernel_size, pool.stride,
                                                                          pool.padding))


class BypassUp(nn.Module):
    """Upsampling BiDense unit, as released: ``BiDenseConvTranspose2d(k=s=scale, bypass=False)(x)
    + CFB(nearest_upsample(x, scale))`` (DPT reassemble of layers 1 and 2)."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, bias: bool = False,
                 binarizer: str = "dab") -> None:
        super().__init__()
        self.body = BiDenseConvTranspose2d(in_channels, out_channels, scale, stride=scale, bias=bias, bypass=False,
                                           binarizer=binarizer)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return add_channel_adaptive_bypass_(self.body(x), F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class LearnableBias(nn.Module):
    """Per-channel additive shift ``x + bias`` (init 0; ReActNet, arXiv 2003.03488); ``dim`` is the channel axis
    (1 for NCHW, -1 for tokens)."""

    def __init__(self, channels: int, dim: int = 1) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias.view(_param_shape(self.bias.numel(), self.dim, x.dim()))


class ShiftPReLU(nn.Sequential):
    """``LearnableBias -> PReLU`` on NCHW tensors (ReActNet, arXiv 2003.03488; the activation after the released
    binary units): the released ``nn.Sequential`` of the two, with its state-dict keys (``0.bias``, ``1.weight``),
    computed by `binary.functional.shift_prelu` (one native pass each way on the CPU). PReLU slopes per channel,
    init 0.25."""

    def __init__(self, channels: int) -> None:
        super().__init__(LearnableBias(channels), nn.PReLU(channels))

    def forward(self, x: Tensor) -> Tensor:
        return shift_prelu(x, self[0].bias, self[1].weight)


class RPReLU(nn.Module):
    """``LearnableBias -> PReLU -> LearnableBias`` (ReActNet's RPReLU, arXiv 2003.03488; after the UPerNet FPN fusion).
    PReLU slopes per channel, init 0.25; ``dim`` is the channel axis (channels on dim 1: one
    `binary.functional.shift_prelu`)."""

    def __init__(self, channels: int, dim: int = 1) -> None:
        super().__init__()
        self.shift_in = LearnableBias(channels, dim)
        self.prelu = nn.PReLU(channels)
        self.shift_out = LearnableBias(channels, dim)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        if self.dim % x.dim() == 1:
            return shift_prelu(x, self.shift_in.bias, self.prelu.weight, self.shift_out.bias)
        x = self.prelu(self.shift_in(x).movedim(self.dim, 1)).movedim(1, self.dim)
        return self.shift_out(x)

