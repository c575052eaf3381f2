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
from binary.layers import (
    BinaryConv2d,
    BinaryConvTranspose2d,
    LearnableBias,
    RPReLU,
    ShiftPReLU,
    ShiftSign,
    WeightBinarizer,
)


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
        pretrained_backbone: True where the authors' model of a non-standard method started its backbone from the
            standard pretrained weights too (`bibert`: DINOv2); the models then load them by default.
        float_head: True where the head's 3x3 conv is the released float head's: the depth head's is a plain
            biased conv without BatchNorm (the segmentation head's is conv + BatchNorm for every method).
    """

    binary_type: str = "fp32_0"
    binary: bool = False
    bypass: bool = False
    standard: bool = False
    pretrained_backbone: bool = False
    float_head: bool = False

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

    def rcu_shift(self, channels: int) -> nn.Module:
        """The shift applied to the input of each conv of a DPT residual conv unit before its shortcut branches off
        (``y = shift(x); y + conv(act(y))``); none (identity) but for the ViT baselines' ReActNet decoder."""
        return nn.Identity()

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
    return ShiftPReLU(channels)


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

    def conv_weight_binarizer(self, groups: int) -> WeightBinarizer:
        """The weight binarizer of a conv with ``groups`` groups (``weight_binarizer`` unless a method needs the
        conv's full input width)."""
        return self.weight_binarizer

    def _init(self, conv: nn.Module) -> nn.Module:
        if self.weight_std is not None:
            nn.init.normal_(conv.weight, std=self.weight_std)
        return conv

    def binary_conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                    dilation: int = 1, groups: int = 1, bias: bool = False) -> BinaryConv2d:
        """The method's binary convolution alone (no BatchNorm), with its weight initialisation; ``bias`` as given."""
        conv = BinaryConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                            input_binarizer=self.input_binarizer(in_channels),
                            weight_binarizer=self.conv_weight_binarizer(groups))
        return self._init(conv)

    def binary_conv_transpose(self, in_channels: int, out_channels: int, scale: int,
                              bias: bool) -> BinaryConvTranspose2d:
        """The method's binary transposed convolution (kernel = stride = ``scale``) alone, with its initialisation."""
        conv = BinaryConvTranspose2d(in_channels, out_channels, scale, stride=scale, bias=bias,
                                     input_binarizer=self.input_binarizer(in_channels),
                                     weight_binarizer=self.weight_binarizer)
        return self._init(conv)

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
             dilation: int = 1, groups: int = 1, bias: bool = False, role: str = "conv") -> nn.Module:
        conv = self.binary_conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                self.has_bias(bias, role))
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels))

    def up(self, in_channels: int, out_channels: int, scale: int, role: str = "up") -> nn.Module:
        conv = self.binary_conv_transpose(in_channels, out_channels, scale, self.has_bias(True, role))
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


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


def released_float_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                        dilation: int = 1, groups: int = 1, role: str = "out") -> nn.Module:
    """The full-precision convs that the authors' ablation and ViT-baseline models keep: ``output_conv1`` / UPerNet's
    ``out_conv`` (role "out") a plain biased conv without BatchNorm, the segmentation head's 3x3 conv (role "head")
    a bias-free conv + BatchNorm, as the released float heads."""
    if role == "out":
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=True)
    if role == "head":
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    raise ValueError(f"no released full-precision conv for role {role!r}; available: head, out")


class ReleasedFloatOutAndHead(Method):
    """Mixin (first base) of the methods whose ``out`` conv (DPT's ``output_conv1``, UPerNet's ``out_conv``) and head
    3x3 conv stay full precision as in the authors' models (`released_float_conv`; `float_head`): the ViT
    baselines' DPT decoder and the `cfb` ablation. Every other role goes to the next base."""

    float_head = True

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
             dilation: int = 1, groups: int = 1, bias: bool = False, role: str = "conv") -> nn.Module:
        if role in ("out", "head"):
            return released_float_conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                       role)
        return super().conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, role)


class ReActDPTDecoder(ReleasedFloatOutAndHead, ReActConvMethod):
    """The DPT decoder of the ViT baselines (`bibert`, `bit`, `bivit`) as the authors built it.

    ReActNet convs (`ReActConvMethod`) with no BatchNorm in the projections, resamplings and ``layer_rn``: bare
    bias-free binary convs, the x4 / x2 resamplings biased binary transposed convs.  The residual conv unit is
    ``y = shift_1(x); y = y + BN(conv_1(ReLU(y))); y = shift_2(y); y + BN(conv_2(ReLU(y)))`` with LearnableBias
    shifts (`rcu_shift`) and biased convs: the shortcut carries the shifted input.  ``output_conv1`` and the head's
    3x3 conv stay full precision (`ReleasedFloatOutAndHead`; depth head biased without BatchNorm).
    """

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
             dilation: int = 1, groups: int = 1, bias: bool = False, role: str = "conv") -> nn.Module:
        if role in ("project", "rn", "down"):
            return self.binary_conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        return super().conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, role)

    def up(self, in_channels: int, out_channels: int, scale: int, role: str = "up") -> nn.Module:
        return self.binary_conv_transpose(in_channels, out_channels, scale, bias=True)

    def rcu_shift(self, channels: int) -> nn.Module:
        return LearnableBias(channels)

    def act(self, channels: int, role: str = "block") -> nn.Module:
        if role == "rcu":
            return nn.ReLU()
        return super().act(channels, role)
