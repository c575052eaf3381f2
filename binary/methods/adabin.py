"""AdaBin (Tu et al., ECCV 2022, arXiv 2208.08084) as the authors' baseline code builds it, following the official
AdaBin code.

Activations, with learnable scalars alpha_a (init 1) and beta_a (init 0) per layer::

    x' = (x - beta_a) / alpha_a,   out = alpha_a * (ApproxSign(x') + beta_a)

so the binary set is {alpha_a (beta_a - 1), alpha_a (beta_a + 1)}.  Weights, per output channel, with
n = C_in * k * k (the conv's input channels times its kernel area, as the authors' ``filter_size``)::

    beta_w = mean(W),  alpha_w = sqrt(sum (W - beta_w)^2 / n),  W_b = alpha_w * sign((W - beta_w) / alpha_w) + beta_w

differentiated through beta_w and alpha_w.  For a grouped conv n exceeds the filter's C_in / groups * k * k
weights: the depthwise 7x7 convs of the ConvNeXt blocks get an alpha_w sqrt(C_in) times smaller than the filter's
standard deviation, as the authors' code computed (README, "Where this implementation differs ...": AdaBin).  The
sign has IR-Net's error-decay estimator for the sign:
d sign(u)/du ~ k t (1 - tanh^2(t u)) with FIXED k = 10, t = 0.1, as the authors' code (the official AdaBin / IR-Net
schedule of k and t over training is not reproduced; the authors' `.cuda()` in backward is not copied).
Nonlinearity Maxout s+ ReLU(x) - s- ReLU(-x) per channel (s+ init 1, s- init 0.25); ReLU in the head.  Weights keep
PyTorch's default initialisation, and the convs have no bias, as the authors' `AdaBinConv2d`.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from binary.functional import ErrorDecaySTE, approx_sign, sign_ste
from binary.layers import WeightBinarizer
from binary.methods.base import BinaryConvMethod
from binary.methods.registry import register

EDE = ErrorDecaySTE(k=10.0, t=0.1)  # IR-Net's error-decay estimator with the authors' fixed constants


def adabin_weight(w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """AdaBin weights W_b = alpha_w sign((W - beta_w) / alpha_w) + beta_w, statistics per output channel (dim 0) of a
    conv weight [C_out, C_in / groups, k, k].

    beta_w = mean(W[o]) and alpha_w = sqrt(sum (W[o] - beta_w)^2 / n) with n = groups * (C_in / groups) * k * k =
    C_in * k * k, the authors' ``filter_size``; both are differentiated through (not detached), as the official
    code.  With ``groups`` > 1 (depthwise convs) n is ``groups`` times the filter's size, as the authors' code.
    """
    dims = tuple(range(1, w.dim()))
    beta = w.mean(dim=dims, keepdim=True)
    alpha = ((w - beta).square().sum(dim=dims, keepdim=True) / (groups * w[0].numel())).sqrt()
    return alpha * sign_ste((w - beta) / alpha, EDE) + beta


class AdaBinActivation(nn.Module):
    """AdaBin input binarizer alpha_a (ApproxSign((x - beta_a) / alpha_a) + beta_a); scalars alpha_a = 1, beta_a = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (approx_sign((x - self.beta) / self.alpha) + self.beta)


class Maxout(nn.Module):
    """AdaBin's nonlinearity s+_c ReLU(x) - s-_c ReLU(-x) on NCHW, per-channel s+ (init 1.0) and s- (init 0.25)."""

    def __init__(self, channels: int, pos_init: float = 1.0, neg_init: float = 0.25) -> None:
        super().__init__()
        self.pos_scale = nn.Parameter(torch.full((channels,), pos_init))
        self.neg_scale = nn.Parameter(torch.full((channels,), neg_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos, neg = self.pos_scale.view(1, -1, 1, 1), self.neg_scale.view(1, -1, 1, 1)
        return pos * torch.relu(x) - neg * torch.relu(-x)


@register("adabin")
class AdaBin(BinaryConvMethod):
    """AdaBin baseline: adaptive binary activations and weights, EDE weight backward, Maxout."""

    weight_std = None
    weight_binarizer = staticmethod(adabin_weight)

    def conv_weight_binarizer(self, groups: int) -> WeightBinarizer:
        return partial(adabin_weight, groups=groups) if groups > 1 else adabin_weight

    def input_binarizer(self, channels: int) -> nn.Module:
        return AdaBinActivation()

    def has_bias(self, bias: bool, role: str) -> bool:
        return bias and role == "rcu"

    def act(self, channels: int, role: str = "block") -> nn.Module:
        return nn.ReLU() if role == "head" else Maxout(channels)
