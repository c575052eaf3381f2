"""BiBERT (Qin et al., ICLR 2022, arXiv 2203.06390) on the ViT, as the authors' baseline code builds it
(PAPER.md section 4, 6.12 and 8.6).

Linear layers (`BiBERTLinear`): input sign(x) with the clipped STE; weight sign(W - mean_row W) * mean_row|W|
(scale detached, clipped STE on the centred weight, which is differentiated through).  Bi-Attention
(`BiBERTAttention`): Q, K, V binarized by sign, scores A = Q_b K_b^T / sqrt(D) binarized by bool(.) to {0, 1}
with no softmax, output bool(A) V_b.  GELU stays; no Direction-Matching Distillation (nor in the authors' code).
The DPT decoder is the authors' ReActNet-style one (`ReActDPT`).  Like every binary model here it is trained from
scratch: the authors' BiBERT model alone loaded the DINOv2 weights (PAPER.md 6.12), which we do not copy (8.6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from binary.base import BinaryLayer
from binary.methods import register
from binary.methods.react import ReActDPT, sign_ste


class _ScaledSignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x.abs() <= 1)
        return torch.sign(x) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None


def bibert_weight(w: torch.Tensor) -> torch.Tensor:
    """W_b = sign(W_c) * mean_row|W| with W_c = W - mean_row W; the scale (of the uncentred W) is detached.

    Backward: h = dW_b * 1[|W_c| <= 1] (not multiplied by the scale), then through the centring dW = h - mean_row h.
    """
    return _ScaledSignSTE.apply(w - w.mean(dim=1, keepdim=True), w.detach().abs().mean(dim=1, keepdim=True))


class BiBERTLinear(BinaryLayer, nn.Linear):
    """y = sign(x) @ bibert_weight(W)^T + bias, the input sign with the clipped STE 1[|x| <= 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(sign_ste(x), bibert_weight(self.weight), self.bias)


class _BoolSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x.abs() < 1)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (inside,) = ctx.saved_tensors
        return grad * inside


def bool_ste(x: torch.Tensor) -> torch.Tensor:
    """bool(x) = 1[x > 0] (sign(x) with -1 -> 0; 0 stays 0); backward the clipped STE 1[|x| < 1].

    The bound is strict, as the authors' quantizer: the scores Q_b K_b^T / sqrt(D) often equal +-1 exactly.
    """
    return _BoolSTE.apply(x)


class BiBERTAttention(nn.Module):
    """Bi-Attention on (B, heads, N, head_dim): bool(sign(Q) sign(K)^T / sqrt(head_dim)) @ sign(V), no softmax.

    The signs carry the clipped STE 1[|.| <= 1], the bool 1[|.| < 1] (see `bool_ste`).
    """

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.scale = head_dim**-0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn = bool_ste((sign_ste(q) @ sign_ste(k).transpose(-2, -1)) * self.scale)
        return attn @ sign_ste(v)


@register("bibert")
class BiBERT(ReActDPT):
    """BiBERT baseline: `BiBERTLinear` everywhere in the ViT, `BiBERTAttention`, GELU; ReActNet decoder."""

    def linear(self, in_features: int, out_features: int, bias: bool = True, role: str = "linear") -> nn.Module:
        return BiBERTLinear(in_features, out_features, bias=bias)

    def attention(self, head_dim: int, num_heads: int) -> nn.Module:
        return BiBERTAttention(head_dim, num_heads)
