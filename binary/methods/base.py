"""The interface through which a binarization method supplies layers to the models, and the method skeletons
that several methods share.

`models/` defines each architecture once and asks a `Method` for every layer that a binarization method
changes (README, "Where this implementation differs from the released code, and why": one definition per
architecture).  `Method` itself is the float mirror (`fp32_0`, the "ConvNeXt" row of arXiv 2411.10346,
Table 1): plain convolutions followed by BatchNorm, float linear layers and softmax attention.  A method
overrides only what it changes, and is registered with `binary.methods.register`.

Shared skeletons (no method module imports another):

* `BinaryConvMethod`: the sign-based CNN baselines as the authors' baseline code builds them (conv unit =
  `binary.layers.BinaryConv2d` + BatchNorm, no bypass; `bnn`, `adabin`, and through `ReActConvMethod` `react`
  and `bisrnet`).
* `ReActConvMethod`: ReActNet's layer choices (arXiv 2003.03488): `binary.layers.ShiftSign` inputs,
  sign * mean|W| weights, `react_act` activations.
* `ReActDPTDecoder`: the ReActNet-style DPT decoder of the ViT baselines (`bibert`, `bit`, `bivit`).
"""

from __future__ import annotations

import torch
from torch import nn

from binary.functional import binarize_weight
from binary.layers import BinaryConv2d, BinaryConvTranspose2d, LearnableBias, RPReLU, ShiftSign, WeightBinarizer


class SoftmaxAttention(nn.Module):
    """Scaled dot-product attention on (B, heads, N, head_dim) tensors: softmax(q k^T / sqrt(d)) v."""

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.scale = head_dim**-0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn = (q * self.scale) @ k.transpose(-2, -1)
        return attn.softmax(dim=-1) @ v


class Method:
    """Layer factory of one binarization method; this base class is the float mirror `fp32_0`.

    Attributes:
        binary_type: the registered name (``MODEL.BINARY_TYPE``).
        binary: True when the method's conv / linear layers are 1-bit.
        bypass: True when every conv unit carries its own full-precision bypass (the CFB of arXiv 2411.10346);
            the models then add no explicit residual connections and no norm outside the units.
        standard: True only for `fp32` (the starred rows of Tables 1 and 3): the models use the official
            ConvNeXt-T / DINOv2 / UperNet / DPT definitions, loadable from pretrained checkpoints.
    """

    binary_type: str = "fp32_0"
    binary: bool = False
    bypass: bool = False
    standard: bool = False

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        role: str = "conv",
    ) -> nn.Module:
        """A conv unit: convolution then BatchNorm (bypass methods add their bypass inside).

        ``role`` names the place in the model ("dw", "pw1", "pw2", "psp", "bottleneck", "lateral",
        "smooth", "fusion", "out", "head", "rcu", "project", ...) for methods that treat places differently.
        """
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias),
            nn.BatchNorm2d(out_channels),
        )

    def down(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int = 0,
             role: str = "down") -> nn.Module:
        """A strided conv unit that changes resolution by 1/stride (ConvNeXt transitions, DPT layer 4); its conv
        is biased, as the released float mirror's transitions (methods drop the bias through ``conv``)."""
        return self.conv(in_channels, out_channels, kernel_size, stride, padding, bias=True, role=role)

    def up(self, in_channels: int, out_channels: int, scale: int, role: str = "up") -> nn.Module:
        """A transposed-conv unit with kernel = stride = ``scale`` (DPT reassemble of layers 1 and 2)."""
        return nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, scale, stride=scale),
            nn.BatchNorm2d(out_channels),
        )

    def act(self, channels: int, role: str = "block") -> nn.Module:
        """The nonlinearity after a conv unit at ``role``: "block" (ConvNeXt MLP), "psp", "fusion",
        "rcu" (DPT residual conv unit), "head". The float mirror: GELU in the blocks, ReLU elsewhere."""
        return nn.GELU() if role == "block" else nn.ReLU()

    def linear(self, in_features: int, out_features: int, bias: bool = True, role: str = "linear") -> nn.Module:
        """A linear layer on token tensors (B, N, C); ``role`` is "qkv", "proj", "fc1" or "fc2"."""
        return nn.Linear(in_features, out_features, bias=bias)

    def vit_act(self, features: int) -> nn.Module:
        """The nonlinearity between the two linear layers of a ViT MLP."""
        return nn.GELU()

    def attention(self, head_dim: int, num_heads: int) -> nn.Module:
        """The attention core: a module mapping q, k, v of shape (B, heads, N, head_dim) to the same shape."""
        return SoftmaxAttention(head_dim, num_heads)


def react_act(channels: int, role: str) -> nn.Module:
    """The ReActNet-style activation after a conv unit (BN is in the unit), shared by `react`, `bisrnet` and
    `bidense` as released: "head" ReLU; "fusion" LearnableBias -> PReLU -> LearnableBias (RPReLU); elsewhere
    LearnableBias -> PReLU."""
    if role == "head":
        return nn.ReLU()
    if role == "fusion":
        return RPReLU(channels)
    return nn.Sequential(LearnableBias(channels), nn.PReLU(channels))


class BinaryConvMethod(Method):
    """Skeleton of the sign-based CNN baselines on the `fp32_0`-style structure, as the authors' baseline code
    builds them.

    Conv unit = `binary.layers.BinaryConv2d` + BatchNorm2d; no bypass (the models add the block residuals).
    Subclasses choose the input binarizer, the weight binarizer, the weight initialisation, which convs keep a
    bias and the activations.
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
        conv = BinaryConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                            self.has_bias(bias, role), input_binarizer=self.input_binarizer(in_channels),
                            weight_binarizer=self.weight_binarizer)
        return nn.Sequential(self._init(conv), nn.BatchNorm2d(out_channels))

    def up(self, in_channels: int, out_channels: int, scale: int, role: str = "up") -> nn.Module:
        conv = BinaryConvTranspose2d(in_channels, out_channels, scale, stride=scale, bias=self.has_bias(True, role),
                                     input_binarizer=self.input_binarizer(in_channels),
                                     weight_binarizer=self.weight_binarizer)
        return nn.Sequential(self._init(conv), nn.BatchNorm2d(out_channels))


class ReActConvMethod(BinaryConvMethod):
    """ReActNet's conv units and activations as the authors' baseline code builds them: `ShiftSign` (RSign with
    the ApproxSign backward) inputs, sign * mean|W| weights (detached scale, clipped STE, init N(0, 1e-3^2)),
    `react_act` activations.  The convs carry no bias (BatchNorm follows), except the DPT residual conv units,
    where the authors set it.
    """

    def input_binarizer(self, channels: int) -> nn.Module:
        return ShiftSign(channels)

    def has_bias(self, bias: bool, role: str) -> bool:
        return bias and role == "rcu"

    def act(self, channels: int, role: str = "block") -> nn.Module:
        return react_act(channels, role)


class ReActDPTDecoder(ReActConvMethod):
    """The DPT decoder of the ViT baselines (`bibert`, `bit`, `bivit`) as the authors built it.

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
