"""ReActNet (Liu et al., ECCV 2020, arXiv 2003.03488) as the authors' baseline code builds it (PAPER.md section 4),
and the pieces every sign-based CNN baseline shares (`bnn`, `adabin`, `bisrnet` and the DPT decoder of the ViT
baselines import them from here).

Shared pieces (beside `binary.functional.approx_sign`, `binarize_weight` and `binary.layers.LearnableBias`,
`RPReLU`, which they use):
    `sign_ste`             sign(x), clipped straight-through gradient 1[|x| <= 1] (BNN).
    `RSign`, `SignSTE`     input binarizers as modules.
    `BinarizedConv2d`, `BinarizedConvTranspose2d`: a conv on a binarized input with a binarized weight; the method
        supplies the input binarizer (a module) and the weight binarizer (a function).
    `BinaryConvMethod`     the `Method` skeleton of these baselines: conv unit = binarized conv + BatchNorm, no bypass.

ReActNet (`react`): RSign(x) = ApproxSign(x + b_c) with a learnable per-input-channel shift b_c (init 0); weights
sign(W) * mean|W| (detached), clipped STE, init N(0, 1e-3^2); no bias; activation BN -> LearnableBias -> PReLU
(the BN is the unit's), the full RPReLU LB -> PReLU -> LB after the FPN fusion, ReLU in the head.  No distillation
and no two-step schedule, as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from binary.base import BinaryLayer
from binary.functional import approx_sign, binarize_weight
from binary.layers import LearnableBias, RPReLU
from binary.methods import register
from binary.methods.base import Method

WeightBinarizer = Callable[[torch.Tensor], torch.Tensor]


class _SignClippedSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x.abs() <= 1)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (inside,) = ctx.saved_tensors
        return grad * inside


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (0 at 0, as `torch.sign`); backward the clipped identity d/dx = 1[|x| <= 1] (BNN, arXiv 1602.02830).

    Saves a boolean mask only.
    """
    return _SignClippedSTE.apply(x)


class RSign(nn.Module):
    """ReActNet's RSign with the Bi-Real backward: approx_sign(x + b_c), b per input channel, init 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.move = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return approx_sign(self.move(x))


class SignSTE(nn.Module):
    """The BNN input binarizer as a module: `sign_ste`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)


class BinarizedConv2d(BinaryLayer, nn.Conv2d):
    """y = conv(binarize_input(x), binarize_weight(W)) + bias, every Conv2d argument honoured.

    ``input_binarizer`` is a module (its parameters train with the layer); ``weight_binarizer`` a function of W.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = False, *, input_binarizer: nn.Module,
                 weight_binarizer: WeightBinarizer) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.binarize_input = input_binarizer
        self.binarize_weight = weight_binarizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.binarize_input(x), self.binarize_weight(self.weight), self.bias)


class BinarizedConvTranspose2d(BinaryLayer, nn.ConvTranspose2d):
    """y = conv_transpose(binarize_input(x), binarize_weight(W)) + bias (weight [C_in, C_out/g, k, k])."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False, *, input_binarizer: nn.Module, weight_binarizer: WeightBinarizer) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.binarize_input = input_binarizer
        self.binarize_weight = weight_binarizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(self.binarize_input(x), self.binarize_weight(self.weight), self.bias, self.stride,
                                  self.padding, self.output_padding, self.groups, self.dilation)


def react_act(channels: int, role: str) -> nn.Module:
    """The ReActNet-style activation after a conv unit (BN is in the unit), shared by `react` and `bidense`
    (PAPER.md 1.5, 4): "head" ReLU; "fusion" LearnableBias -> PReLU -> LearnableBias (RPReLU); elsewhere
    LearnableBias -> PReLU."""
    if role == "head":
        return nn.ReLU()
    if role == "fusion":
        return RPReLU(channels)
    return nn.Sequential(LearnableBias(channels), nn.PReLU(channels))


class BinaryConvMethod(Method):
    """Skeleton of the sign-based CNN baselines on the `fp32_0`-style structure (PAPER.md section 4).

    Conv unit = binarized conv + BatchNorm2d; no bypass (the models add the block residuals).  Subclasses choose the
    input binarizer, the weight binarizer, the weight initialisation, which convs keep a bias and the activations.
    """

    binary = True
    bypass = False
    weight_std: float | None = 1e-3  # N(0, std^2) weight init as the authors' binary convs; None keeps PyTorch's

    def input_binarizer(self, channels: int) -> nn.Module:
        """The module that binarizes a conv's ``channels``-channel input."""
        raise NotImplementedError

    weight_binarizer: WeightBinarizer = staticmethod(binarize_weight)  # W -> binarized W for the forward pass

    def has_bias(self, bias: bool, role: str) -> bool:
        """Whether the conv at ``role`` keeps a bias, given the float architecture's ``bias``."""
        raise NotImplementedError

    def _init(self, conv: nn.Module) -> nn.Module:
        if self.weight_std is not None:
            nn.init.normal_(conv.weight, std=self.weight_std)
        return conv

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
             dilation: int = 1, groups: int = 1, bias: bool = False, role: str = "conv") -> nn.Module:
        conv = BinarizedConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                               self.has_bias(bias, role), input_binarizer=self.input_binarizer(in_channels),
                               weight_binarizer=self.weight_binarizer)
        return nn.Sequential(self._init(conv), nn.BatchNorm2d(out_channels))

    def up(self, in_channels: int, out_channels: int, scale: int, role: str = "up") -> nn.Module:
        conv = BinarizedConvTranspose2d(in_channels, out_channels, scale, stride=scale, bias=self.has_bias(True, role),
                                        input_binarizer=self.input_binarizer(in_channels),
                                        weight_binarizer=self.weight_binarizer)
        return nn.Sequential(self._init(conv), nn.BatchNorm2d(out_channels))


@register("react")
class ReAct(BinaryConvMethod):
    """ReActNet baseline (PAPER.md section 4): RSign + ApproxSign, sign * mean|W| weights, LB -> PReLU activations.

    The convs carry no bias (BatchNorm follows), except the DPT residual conv units, where the authors set it.
    """

    def input_binarizer(self, channels: int) -> nn.Module:
        return RSign(channels)

    def has_bias(self, bias: bool, role: str) -> bool:
        return bias and role == "rcu"

    def act(self, channels: int, role: str = "block") -> nn.Module:
        return react_act(channels, role)


class ReActDPT(ReAct):
    """The DPT decoder of the ViT baselines (`bibert`, `bit`, `bivit`) as the authors built it (PAPER.md section 4).

    ReActNet convs and transposed convs, with BN and explicit residuals (added by the model); ``output_conv1``
    (role "out") and the head's first 3x3 conv (role "head") stay full precision (float conv + BN); the residual
    conv units use LearnableBias -> ReLU before each conv.
    """

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
             dilation: int = 1, groups: int = 1, bias: bool = False, role: str = "conv") -> nn.Module:
        if role in ("out", "head"):
            return Method.conv(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                               role)
        return super().conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, role)

    def act(self, channels: int, role: str = "block") -> nn.Module:
        if role == "rcu":
            return nn.Sequential(LearnableBias(channels), nn.ReLU())
        return super().act(channels, role)
