"""BiDense modules (PAPER.md 1.1-1.5, 8): the DAB, weight-binarizing convs and linear, the BiDense conv / transposed
conv / linear units with their channel-adaptive full-precision bypass (CFB), the resampling bypass units, and the
LearnableBias / RPReLU activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binary.base import BinaryLayer, shape_macs
from binary.functional import (
    add_channel_adaptive_bypass_,
    approx_sign,
    bidense_conv_bn,
    binarize_weight,
    binarize_weight_centered,
    dab,
    dab_conv2d,
)


def _param_shape(channels: int, dim: int, ndim: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[dim] = channels
    return tuple(shape)


class DAB(nn.Module):
    """Distribution-adaptive Binarizer, PAPER.md 1.1: ``alpha * ApproxSign(x - (k * mean(x) + b))`` with
    ``alpha = exp(a * (mean|s| - 1))``, statistics per sample and channel (see `binary.functional.dab`).

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
    """ReActNet-style input binarizer: ``ApproxSign(x + b)`` with a per-channel shift b (init 0), PAPER.md 1.2 and
    section 4 (used by the `cfb` ablation in place of the DAB)."""

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


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    """Conv2d with binary weights ``mean|W_o| * sign(W)`` (per output channel, detached; clipped STE), PAPER.md
    1.2. Its input is expected to be binary already (from a `DAB`). Weight init N(0, 1e-3^2)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        nn.init.normal_(self.weight, std=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, binarize_weight(self.weight), self.bias)


class BinaryConvTranspose2d(BinaryLayer, nn.ConvTranspose2d):
    """ConvTranspose2d with binary weights. The weight is [C_in, C_out/groups, kh, kw] and the scale is mean|w|
    over dims 1-3, i.e. **per input channel**, as in the released code (PAPER.md 8.11). Init N(0, 1e-3^2)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        nn.init.normal_(self.weight, std=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, binarize_weight(self.weight), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class BinaryLinear(BinaryLayer, nn.Linear):
    """Linear layer with row-centred binary weights (`binary.functional.binarize_weight_centered`), PAPER.md 1.2.
    Weight init N(0, 1e-3^2)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        nn.init.normal_(self.weight, std=1e-3)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, binarize_weight_centered(self.weight), self.bias)


class _BiDenseConvUnit(nn.Module):
    """Shared forward of the BiDense conv units: ``BN(binary_conv(DAB(x))) [+ CFB(x, C_out)]``."""

    conv: BinaryConv2d | BinaryConvTranspose2d

    def _conv_args(self) -> tuple:
        conv = self.conv
        transposed = isinstance(conv, nn.ConvTranspose2d)
        return (conv.stride, conv.padding, conv.dilation, conv.groups, transposed,
                conv.output_padding if transposed else (0, 0))

    def binary_macs(self, input: Tensor, output: Tensor) -> int:
        """Binary MACs of one call: those of ``self.conv`` (the fused path runs its weights without calling it;
        DAB, BN and the bypass are elementwise). Read by `binary.summary`."""
        return shape_macs(self.conv, input, output)

    def forward(self, x: Tensor) -> Tensor:
        conv, bn, dab_ = self.conv, self.norm, self.binarizer
        if not isinstance(dab_, DAB):
            y = bn(conv(dab_(x)))
        elif type(bn) is not nn.BatchNorm2d:  # e.g. SyncBatchNorm: fuse only the DAB and the conv
            y = bn(dab_conv2d(x, dab_.k, dab_.b, dab_.a, conv.weight, conv.bias, *self._conv_args()))
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
                                   momentum, bn.eps, self.bypass, *self._conv_args())
        return add_channel_adaptive_bypass_(y, x) if self.bypass else y


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
    """The BiDense binary conv unit, PAPER.md 1.3: ``y = BN(BinaryConv2d(DAB(x))) + CFB(x, C_out)``.

    ``binarizer="shift_sign"`` replaces the DAB by `ShiftSign` (the `cfb` ablation).
    With the DAB and a plain BatchNorm2d the whole unit runs as one autograd Function
    (`binary.functional.bidense_conv_bn`) that saves what a float conv + BN saves (x, the conv output, per-channel
    statistics) and rebuilds the binary input in backward; with another norm (e.g. SyncBatchNorm) only the DAB and
    the conv are fused (`binary.functional.dab_conv2d`) and the norm module runs as usual. With ``bypass=False`` the
    unit returns ``BN(BinaryConv2d(DAB(x)))`` and the caller adds a resampled bypass (`BypassDown`).
    A bypass needs an output of the input's resolution: ``stride > 1`` with ``bypass=True`` is an error.

    Submodules: ``binarizer`` (`DAB`), ``conv`` (`BinaryConv2d`), ``norm`` (BatchNorm2d).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = False, bypass: bool = True,
                 binarizer: str = "dab") -> None:
        super().__init__()
        if bypass and stride != 1:
            raise ValueError(f"BiDenseConv2d({in_channels}, {out_channels}, stride={stride}): the CFB bypass needs "
                             "stride 1; use BypassDown for strided layers")
        self.binarizer = _input_binarizer(binarizer, in_channels)
        self.conv = BinaryConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                 bias=bias)
        self.norm = nn.BatchNorm2d(out_channels)
        self.bypass = bypass


class BiDenseConvTranspose2d(_BiDenseConvUnit):
    """``BN(BinaryConvTranspose2d(DAB(x))) [+ CFB(x, C_out)]`` (PAPER.md 1.3-1.4). As `BiDenseConv2d`, the
    bypass needs stride 1; `BypassUp` resamples it for ``kernel = stride = scale`` upsampling."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 output_padding: int = 0, groups: int = 1, bias: bool = False, dilation: int = 1,
                 bypass: bool = True, binarizer: str = "dab") -> None:
        super().__init__()
        if bypass and stride != 1:
            raise ValueError(f"BiDenseConvTranspose2d({in_channels}, {out_channels}, stride={stride}): the CFB "
                             "bypass needs stride 1; use BypassUp for upsampling layers")
        self.binarizer = _input_binarizer(binarizer, in_channels)
        self.conv = BinaryConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding,
                                          groups, bias=bias, dilation=dilation)
        self.norm = nn.BatchNorm2d(out_channels)
        self.bypass = bypass


class BiDenseLinear(nn.Module):
    """BiDense linear unit on tokens B x N x C, PAPER.md 8.2: ``LayerNorm(BinaryLinear(DAB(x))) + CFB(x)``, with
    the DAB over the token axis, row-centred binary weights and LayerNorm(eps=1e-6). (The released layer binarized
    with a LearnableBias + ApproxSign on a path its models never take; we use the DAB: documented deviation.)"""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, bypass: bool = True) -> None:
        super().__init__()
        self.binarizer = DAB(in_features, dim=-1)
        self.linear = BinaryLinear(in_features, out_features, bias=bias)
        self.norm = nn.LayerNorm(out_features, eps=1e-6)
        self.bypass = bypass

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.linear(self.binarizer(x)))
        return add_channel_adaptive_bypass_(y, x, dim=-1) if self.bypass else y


class BypassDown(nn.Module):
    """Strided BiDense unit, PAPER.md 1.4: ``BiDenseConv2d(k, s, p, bypass=False)(x) + CFB(AvgPool2d(k, s, p)(x))``
    (ConvNeXt transitions k=s=2; DPT layer 4 k=3, s=2, p=1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int = 0,
                 groups: int = 1, bias: bool = False, binarizer: str = "dab") -> None:
        super().__init__()
        self.body = BiDenseConv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias,
                                  bypass=False, binarizer=binarizer)
        self.pool = nn.AvgPool2d(kernel_size, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        return add_channel_adaptive_bypass_(self.body(x), self.pool(x))


class BypassUp(nn.Module):
    """Upsampling BiDense unit, PAPER.md 1.4: ``BiDenseConvTranspose2d(k=s=scale, bypass=False)(x)
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
    """Per-channel additive shift ``x + bias`` (init 0), PAPER.md 1.5; ``dim`` is the channel axis
    (1 for NCHW, -1 for tokens)."""

    def __init__(self, channels: int, dim: int = 1) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias.view(_param_shape(self.bias.numel(), self.dim, x.dim()))


class RPReLU(nn.Module):
    """``LearnableBias -> PReLU -> LearnableBias`` (ReActNet's RPReLU; PAPER.md 1.5, the UPerNet FPN fusion).
    PReLU slopes per channel, init 0.25; ``dim`` is the channel axis."""

    def __init__(self, channels: int, dim: int = 1) -> None:
        super().__init__()
        self.shift_in = LearnableBias(channels, dim)
        self.prelu = nn.PReLU(channels)
        self.shift_out = LearnableBias(channels, dim)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        x = self.shift_in(x)
        if self.dim % x.dim() == 1:
            x = self.prelu(x)
        else:
            x = self.prelu(x.movedim(self.dim, 1)).movedim(1, self.dim)
        return self.shift_out(x)

