"""BNN (Courbariaux, Hubara et al., "Binarized Neural Networks", arXiv 1602.02830) as the authors' baseline code
builds it.

Activations sign(x) and weights sign(W), both with the clipped straight-through estimator 1[|.| <= 1]; no weight
scaling factor; weights initialised N(0, 1e-3^2); the convs keep the float architecture's bias, and the stage
transitions have one (the authors' `HardBinaryConv2d` defaults to bias=True).  Nonlinearity GELU inside the
ConvNeXt blocks, ReLU in the PSP, the FPN fusion, the DPT residual units and the head.  The baselines thus differ
in more than the binarizer (BNN keeps conv biases and GELU), as released.
"""

from __future__ import annotations

import torch
from torch import nn

from binary.functional import sign_ste
from binary.methods.base import BinaryConvMethod
from binary.methods.registry import register


class SignSTE(nn.Module):
    """The BNN input binarizer as a module: `binary.functional.sign_ste` with the clipped STE 1[|x| <= 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)


@register("bnn")
class BNN(BinaryConvMethod):
    """BNN baseline: sign inputs and sign weights (no scale), clipped STE, conv bias, GELU / ReLU."""

    weight_binarizer = staticmethod(sign_ste)

    def input_binarizer(self, channels: int) -> nn.Module:
        return SignSTE()

    def has_bias(self, bias: bool, role: str) -> bool:
        return bias

