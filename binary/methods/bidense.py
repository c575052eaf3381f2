"""The BiDense method (arXiv 2411.10346: the DAB and the CFB in every binary conv unit) as released, and its `cfb`
ablation.

`bidense`: every conv unit is a `BiDenseConv2d` (DAB -> binary conv -> BN, + CFB); strided units are `BypassDown`
(avg-pooled bypass), upsampling units `BypassUp` (nearest-upsampled bypass); activations LearnableBias -> PReLU,
the full RPReLU after the FPN fusion and ReLU in the head.  The ViT backbone is the BiViT one, as released
(`binary.transformer_layers`: `BiViTLinear` with a learnable scale in qkv / proj, a detached one in the MLP;
`BiViTAttention`; GELU).

`cfb`: the authors' ablation model: the same structure with the ReActNet input binarizer (`ShiftSign`:
LearnableBias + ApproxSign) instead of the DAB, i.e. binary conv units with the CFB but no DAB, and, as in the
authors' ablation code, a full-precision ``out_conv1`` (biased, no BatchNorm, no bypass) and head 3x3 conv
(segmentation: bias-free conv + BatchNorm; depth: biased conv, no BatchNorm), `ReleasedFloatOutAndHead`.
"""

from __future__ import annotations

from torch import nn

from binary.layers import BiDenseConv2d, BiDenseConvTranspose2d, BypassDown, BypassUp
from binary.methods.base import Method, ReleasedFloatOutAndHead, react_act
from binary.methods.registry import register
from binary.transformer_layers import BiViTAttention, BiViTLinear


@register("bidense")
class BiDense(Method):
    """BiDense: DAB + 1-bit weights + BN + channel-adaptive full-precision bypass in every conv unit."""

    binary = True
    bypass = True
    binarizer: str = "dab"

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
             dilation: int = 1, groups: int = 1, bias: bool = False, role: str = "conv") -> nn.Module:
        """`BiDenseConv2d` (stride 1) or `BypassDown` (stride > 1, whose bypass is average-pooled)."""
        if stride != 1:
            if dilation != 1:
                raise ValueError(
                    f"{self.binary_type}: a strided conv unit ({role}) cannot be dilated (dilation={dilation})"
                )
            return BypassDown(in_channels, out_channels, kernel_size, stride, padding, groups, bias, self.binarizer)
        return BiDenseConv2d(in_channels, out_channels, kernel_size, 1, padding, dilation, groups, bias,
                             binarizer=self.binarizer)

    def down(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int = 0,
             role: str = "down") -> nn.Module:
        return BypassDown(in_channels, out_channels, kernel_size, stride, padding, binarizer=self.binarizer)

    def up(self, in_channels: int, out_channels: int, scale: int, role: str = "up") -> nn.Module:
        return BypassUp(in_channels, out_channels, scale, binarizer=self.binarizer)

    def conv_transpose(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                       padding: int = 0, output_padding: int = 0, groups: int = 1, bias: bool = False,
                       role: str = "conv_transpose") -> nn.Module:
        """`BiDenseConvTranspose2d` with its CFB (stride 1), or `BypassUp` for ``kernel = stride``, no padding."""
        if stride == 1:
            return BiDenseConvTranspose2d(in_channels, out_channels, kernel_size, 1, padding, output_padding, groups,
                                          bias, binarizer=self.binarizer)
        if kernel_size == stride and padding == 0 and output_padding == 0 and groups == 1:
            return BypassUp(in_channels, out_channels, stride, bias, binarizer=self.binarizer)
        raise ValueError(f"{self.binary_type}: a strided transposed conv unit ({role}) needs kernel_size == stride, no "
                         f"padding and groups 1 for its upsampled bypass; got kernel_size={kernel_size}, "
                         f"stride={stride}, padding={padding}, output_padding={output_padding}, groups={groups}")

    def act(self, channels: int, role: str = "block") -> nn.Module:
        """"head": ReLU; "fusion": LearnableBias -> PReLU -> LearnableBias; otherwise LearnableBias -> PReLU."""
        return react_act(channels, role)

    def linear(self, in_features: int, out_features: int, bias: bool = True, role: str = "linear") -> nn.Module:
        """BiViT linear layers, as released: learnable scale in "qkv" and "proj", detached in "fc1"/"fc2"."""
        return BiViTLinear(in_features, out_features, bias=bias, learnable_scale=role in ("qkv", "proj"))

    def attention(self, head_dim: int, num_heads: int) -> nn.Module:
        """BiViT's softmax-aware binary attention, as released."""
        return BiViTAttention(head_dim, num_heads)


@register("cfb")
class CFB(ReleasedFloatOutAndHead, BiDense):
    """Ablation: BiDense units with the ReActNet binarizer (LearnableBias + ApproxSign) instead of the DAB;
    ``out_conv1`` and the head's 3x3 conv full precision (`ReleasedFloatOutAndHead`), as the authors ran it."""

    binarizer = "shift_sign"
