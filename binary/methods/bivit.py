"""BiViT (He et al., ICCV 2023, arXiv 2211.07091) as the authors' baseline code builds it.

Linear layers (`binary.transformer_layers.BiViTLinear`): input sign(x) with the clipped STE; weight
sign(W - mean_row W) times a per-output-row scale, learnable in qkv / proj (initialised to the row mean|W| on the
first forward), the detached row mean|W| in the MLP.  Attention (`binary.transformer_layers.BiViTAttention`): Q, K,
V binarized by sign (clipped STE), softmax-aware binarization of the attention probabilities
A_b = 1[A >= 0.25 max_j A_ij] with a straight-through softmax backward.  GELU stays.  Cross-layer binarization is
not implemented (nor in the authors' code).  The DPT decoder is the authors' ReActNet-style one
(`ReActDPTDecoder`).  The `bidense` method uses the same layers for its ViT backbone, as released.
"""

from __future__ import annotations

from torch import nn

from binary.methods.base import ReActDPTDecoder
from binary.methods.registry import register
from binary.transformer_layers import BiViTAttention, BiViTLinear


@register("bivit")
class BiViT(ReActDPTDecoder):
    """BiViT baseline: `BiViTLinear` (learnable scale in qkv and proj), `BiViTAttention`, GELU; ReActNet decoder."""

    def linear(self, in_features: int, out_features: int, bias: bool = True, role: str = "linear") -> nn.Module:
        return BiViTLinear(in_features, out_features, bias=bias, learnable_scale=role in ("qkv", "proj"))

    def attention(self, head_dim: int, num_heads: int) -> nn.Module:
        return BiViTAttention(head_dim, num_heads)
