"""Binary transformer layers that several methods share: BiViT's linear layer and softmax-aware binary attention
(He et al., ICCV 2023, arXiv 2211.07091) as the authors' baseline code builds them.  The `bivit` baseline uses
them in its ViT, and the released `bidense` DPT uses the same BiViT-binarised ViT-S/14 backbone.

Every sign here has the authors' open clipped STE ``d sign(x)/dx ~ 1[|x| < 1]`` (`binary.functional.CLIPPED_OPEN`):
the boundary matters, since the input of ``proj`` is A_b V_b with binary A_b and V_b, so a large share of its
entries is exactly +-1 and gets no gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

from binary.counting import BinaryLayer
from binary.eval_cache import EvalCache
from binary.functional import CLIPPED_OPEN, compute_dtype, sign_ste


class BiViTLinear(EvalCache, BinaryLayer, nn.Linear):
    """y = sign(x) @ (s * sign(W - mean_row W))^T + bias, sign with the open clipped STE 1[|.| < 1].

    ``learnable_scale=True`` (qkv, proj; the authors' `BinaryLinear_adapscaling`): s is a parameter of shape
    (out_features, 1), set to the row mean|W| of the weight at the first forward (so that it follows any weight
    re-initialisation; a loaded non-zero scale is kept), and W is initialised U(-0.015, 0.015).
    ``learnable_scale=False`` (fc1, fc2; `BinaryLinear_STE`): s = row mean|W|, detached, recomputed every forward.
    The centring W - mean_row W is differentiated through, so dW = g - mean_row(g) with g = dW_b * s * 1[|W_c| < 1].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, learnable_scale: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.learnable_scale = learnable_scale
        if learnable_scale:
            nn.init.uniform_(self.weight, -0.015, 0.015)
            self.scale = nn.Parameter(torch.zeros(out_features, 1))
            self._scale_checked = False

    def _init_scale(self) -> None:
        with torch.no_grad():
            if not torch.any(self.scale):
                self.scale.copy_(self.weight.abs().mean(dim=1, keepdim=True))
        self._scale_checked = True

    def binary_weight(self) -> torch.Tensor:
        """The binarized weight s * sign(W - mean_row W) used in the forward pass (cached in eval mode,
        `binary.eval_cache`)."""
        if not self.learnable_scale:
            return self.eval_cached("binary_weight", self._binary_weight, self.weight)
        if not self._scale_checked:
            self._init_scale()
        return self.eval_cached("binary_weight", self._binary_weight, self.weight, self.scale)

    def _binary_weight(self) -> torch.Tensor:
        if self.learnable_scale:
            scale = self.scale
        else:
            scale = self.weight.detach().abs().mean(dim=1, keepdim=True)
        return scale * sign_ste(self.weight - self.weight.mean(dim=1, keepdim=True), CLIPPED_OPEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(sign_ste(x, CLIPPED_OPEN), self.binary_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, learnable_scale={self.learnable_scale}"


def _keep_above(attn: torch.Tensor, threshold: float, dtype: torch.dtype) -> torch.Tensor:
    """``1[A >= threshold * max_j A]`` in ``dtype``, written in one pass."""
    cut = threshold * attn.amax(dim=-1, keepdim=True)
    return torch.ge(attn, cut, out=torch.empty(attn.shape, dtype=dtype, device=attn.device))


class _ThresholdedAttention(Function):
    """``A_b @ V_b`` with ``A_b = 1[A >= t * max_j A]``, the gradient reaching A straight through
    (``dA = dOut @ V_b^T``, as if the output were ``A @ V_b``) and ``dV_b = A_b^T @ dOut``.

    The released ``A + (A_b - A).detach()`` has exactly the value A_b (for A in [0, 1], ``A + fl(1 - A)`` rounds to
    1), so values and gradients are theirs bit for bit. Saves A and V_b only: A is the softmax output, which the
    softmax keeps for its own backward anyway, so the N x N binary matrix is rebuilt in backward (two passes over A)
    instead of being stored. The products run in ``compute_dtype`` (the autocast dtype under mixed precision, as
    autocast would run them)."""

    @staticmethod
    def forward(ctx, attn: torch.Tensor, vb: torch.Tensor, threshold: float) -> torch.Tensor:
        dtype = compute_dtype(attn, vb)
        ctx.save_for_backward(attn, vb)
        ctx.threshold, ctx.dtype = threshold, dtype
        with torch.autocast(attn.device.type, enabled=False):
            return _keep_above(attn, threshold, dtype) @ vb.to(dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        attn, vb = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        grad_attn = grad_vb = None
        if ctx.needs_input_grad[0]:
            grad_attn = (grad @ vb.to(ctx.dtype).transpose(-2, -1)).to(attn.dtype)
        if ctx.needs_input_grad[1]:
            grad_vb = (_keep_above(attn, ctx.threshold, ctx.dtype).transpose(-2, -1) @ grad).to(vb.dtype)
        return grad_attn, grad_vb, None


class BiViTAttention(nn.Module):
    """Softmax-aware binary attention on (B, heads, N, head_dim) tensors.

    Q_b, K_b, V_b = sign(Q), sign(K), sign(V) (open clipped STE 1[|.| < 1]);  A = softmax(Q_b K_b^T / sqrt(head_dim));
    A_b = 1[A >= 0.25 * max_j A_ij] in the forward pass, with the gradient of A (straight-through on the softmax);
    output A_b V_b.
    """

    threshold: float = 0.25

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.scale = head_dim**-0.5
        # A power-of-two scale (head_dim 4, 16, 64, ...; ViT-S/14 has 64) multiplies exactly, so it can scale the
        # N x head_dim signs of Q instead of the N x N scores: same values and gradients, bit for bit.
        self.scale_queries = math.frexp(self.scale)[0] == 0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qb, kb_t = sign_ste(q, CLIPPED_OPEN), sign_ste(k, CLIPPED_OPEN).transpose(-2, -1)
        scores = (qb * self.scale) @ kb_t if self.scale_queries else (qb @ kb_t) * self.scale
        return _ThresholdedAttention.apply(scores.softmax(dim=-1), sign_ste(v, CLIPPED_OPEN), self.threshold)
