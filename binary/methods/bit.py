"""BiT (Liu et al., NeurIPS 2022, arXiv 2205.13016) on the ViT, as the authors' baseline code builds it
with one fix (README, "Where this implementation differs from the released code, and why": baselines).

Elastic binarization (`ElasticBinarizer`, from Learned Step-size Quantization) with a learnable layer-wise scale
alpha: signed inputs map to {-alpha, alpha} = alpha sign(x), non-negative ones (the attention probabilities) to
{0, alpha} = alpha clamp(round(x / alpha), 0, 1).  alpha is set at the first forward to 2 mean|x| (signed) or
4 mean|x| (unsigned) and clamped below at 1e-5.  Backward (LSQ), with n the number of elements of x and
q = x / alpha:  dx = g 1[Qn <= q <= 1] (Qn = -1 signed, 0 unsigned);  dalpha = sum(g sign(x)) / sqrt(n) (signed),
sum(g (1[q > 1] + 1[0 <= q <= 1] (round(q) - q))) / sqrt(n) (unsigned).
Linear layers (`BiTLinear`): a learnable per-feature shift (LearnableBias, init 0) then the signed elastic
binarizer on the input; BWN weights sign(W - mean W) * ||W||_1 / n (layer-wise scalars; identity backward).
Attention (`BiTAttention`): Q, K, V each through their own signed binarizer, A = softmax(Q_b K_b^T / sqrt(D)),
A_b through an unsigned one, output A_b V_b.  Fix: K and V are binarized from K and V; the authors' code
binarized all three from Q.  No distillation (nor in the authors' code).  GELU stays; the DPT decoder is the
authors' ReActNet-style one (`ReActDPTDecoder`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from binary.counting import BinaryLayer
from binary.eval_cache import EvalCache
from binary.layers import LearnableBias
from binary.methods.base import ReActDPTDecoder
from binary.methods.registry import register

ALPHA_MIN = 1e-5


class _ElasticSigned(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        alpha = alpha.clamp(min=ALPHA_MIN)
        ctx.save_for_backward(x, alpha)
        return torch.sign(x) * alpha

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, alpha = ctx.saved_tensors
        q = x / alpha
        gx = grad * ((q >= -1) & (q <= 1))
        galpha = (grad * torch.sign(x)).sum().div(math.sqrt(x.numel())).reshape(alpha.shape)
        return gx, galpha


class _ElasticUnsigned(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        alpha = alpha.clamp(min=ALPHA_MIN)
        ctx.save_for_backward(x, alpha)
        return (x / alpha).round().clamp(0, 1) * alpha

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, alpha = ctx.saved_tensors
        q = x / alpha
        middle = (q >= 0) & (q <= 1)
        step = torch.where(middle, q.round() - q, (q > 1).to(q.dtype))
        galpha = (grad * step).sum().div(math.sqrt(x.numel())).reshape(alpha.shape)
        return grad * middle, galpha


class ElasticBinarizer(nn.Module):
    """BiT's elastic binarizer with a learnable scalar step ``alpha`` (equations in the module docstring).

    ``alpha`` is a parameter and ``initialized`` a buffer, so a state dict saved after the first forward restores
    both and no re-initialisation happens.  Under torch.distributed the first-batch initial value is averaged over
    the processes (an all-reduce, so the first forward must run on every process, as DDP training does), so that
    every replica starts from the same alpha; the authors' replicas each kept their own first-batch value.
    """

    def __init__(self, signed: bool) -> None:
        super().__init__()
        self.signed = signed
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self._checked = False  # skips reading the buffer (a device sync) once it is known to be set

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        value = x.abs().mean() * (2.0 if self.signed else 4.0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(value)
            value /= dist.get_world_size()
        self.alpha.copy_(value)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._checked:
            if not self.initialized:
                self._initialize(x)
            self._checked = True
        return (_ElasticSigned if self.signed else _ElasticUnsigned).apply(x, self.alpha)

    def extra_repr(self) -> str:
        return f"signed={self.signed}"


class _BWN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        return torch.sign(w - w.mean()) * w.abs().mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def bwn_weight(w: torch.Tensor) -> torch.Tensor:
    """Binary Weight Network weights sign(W - mean W) * ||W||_1 / n over the whole tensor; identity backward."""
    return _BWN.apply(w)


class BiTLinear(EvalCache, BinaryLayer, nn.Linear):
    """y = elastic_signed(x + b) @ bwn_weight(W)^T + bias on (..., in_features) tokens; b per input feature; the
    binary weight is cached in eval mode (`binary.eval_cache`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.move = LearnableBias(in_features, dim=-1)
        self.binarize_input = ElasticBinarizer(signed=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.eval_cached("binary_weight", lambda: bwn_weight(self.weight), self.weight)
        return F.linear(self.binarize_input(self.move(x)), weight, self.bias)


class BiTAttention(nn.Module):
    """BiT attention on (B, heads, N, head_dim): softmax(Q_b K_b^T / sqrt(D)) binarized to {0, alpha}, times V_b."""

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.scale = head_dim**-0.5
        self.binarize_q = ElasticBinarizer(signed=True)
        self.binarize_k = ElasticBinarizer(signed=True)
        self.binarize_v = ElasticBinarizer(signed=True)
        self.binarize_attn = ElasticBinarizer(signed=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn = (self.binarize_q(q) @ self.binarize_k(k).transpose(-2, -1)) * self.scale
        return self.binarize_attn(attn.softmax(dim=-1)) @ self.binarize_v(v)


@register("bit")
class BiT(ReActDPTDecoder):
    """BiT baseline: `BiTLinear` everywhere in the ViT, `BiTAttention`, GELU; ReActNet decoder."""

    def linear(self, in_features: int, out_features: int, bias: bool = True, role: str = "linear") -> nn.Module:
        return BiTLinear(in_features, out_features, bias=bias)

    def attention(self, head_dim: int, num_heads: int) -> nn.Module:
        return BiTAttention(head_dim, num_heads)
