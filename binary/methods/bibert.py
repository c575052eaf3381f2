"""BiBERT (Qin et al., ICLR 2022, arXiv 2203.06390) on the ViT, as the authors' baseline code builds it.

Linear layers (`BiBERTLinear`): input sign(x) with the clipped STE 1[|x| <= 1]; weight sign(W - mean_row W) *
mean_row|W| (scale detached, clipped STE 1[|W_c| <= 1] on the centred weight, which is differentiated through).
The closed boundary is what the authors' ``clamp`` trick computed under torch 2.1.2.  Bi-Attention
(`BiBERTAttention`): Q, K, V binarized by sign, scores A = Q_b K_b^T / sqrt(D) binarized by bool(.) to {0, 1}
with no softmax, output bool(A) V_b; these three signs and bool(.) have the authors' explicit-mask STE
1[|x| < 1] (open: the scores are multiples of 1 / sqrt(D) and often equal +-1).  GELU stays; no
Direction-Matching Distillation (nor in the authors' code).  The DPT decoder is the authors' ReActNet-style one
(`ReActDPTDecoder`).  As the authors' BiBERT model, the backbone starts from the DINOv2 ViT-S/14 weights
(``pretrained_backbone``; README, "Pretrained weights").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from binary.counting import BinaryLayer
from binary.eval_cache import EvalCache
from binary.functional import CLIPPED_OPEN, sign_ste
from binary.methods.base import ReActDPTDecoder
from binary.methods.registry import register


def bibert_weight(w: torch.Tensor) -> torch.Tensor:
    """W_b = sign(W_c) * mean_row|W| with W_c = W - mean_row W; the scale (of the uncentred W) is detached.

    Backward: h = dW_b * 1[|W_c| <= 1] (not multiplied by the scale), then through the centring dW = h - mean_row h.
    """
    return sign_ste(w - w.mean(dim=1, keepdim=True), scale=w.detach().abs().mean(dim=1, keepdim=True))


class BiBERTLinear(EvalCache, BinaryLayer, nn.Linear):
    """y = sign(x) @ bibert_weight(W)^T + bias, the input sign with the clipped STE 1[|x| <= 1]; the binary weight
    is cached in eval mode (`binary.eval_cache`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.eval_cached("binary_weight", lambda: bibert_weight(self.weight), self.weight)
        return F.linear(sign_ste(x), weight, self.bias)


class BiBERTAttention(nn.Module):
    """Bi-Attention on (B, heads, N, head_dim): bool(sign(Q) sign(K)^T / sqrt(head_dim)) @ sign(V), no softmax.

    The signs and bool(x) = 1[x > 0] (sign with -1 -> 0; 0 stays 0) carry the open clipped STE 1[|.| < 1]
    (`binary.functional.CLIPPED_OPEN`), as the authors' quantizers.
    """

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.scale = head_dim**-0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = (sign_ste(q, CLIPPED_OPEN) @ sign_ste(k, CLIPPED_OPEN).transpose(-2, -1)) * self.scale
        return sign_ste(scores, CLIPPED_OPEN, unsigned=True) @ sign_ste(v, CLIPPED_OPEN)


@register("bibert")
class BiBERT(ReActDPTDecoder):
    """BiBERT baseline: `BiBERTLinear` everywhere in the ViT, `BiBERTAttention`, GELU; ReActNet decoder; DINOv2
    initialisation of the backbone."""

    pretrained_backbone = True

    def linear(self, in_features: int, out_features: int, bias: bool = True, role: str = "linear") -> nn.Module:
        return BiBERTLinear(in_features, out_features, bias=bias)

    def attention(self, head_dim: int, num_heads: int) -> nn.Module:
        return BiBERTAttention(head_dim, num_heads)
