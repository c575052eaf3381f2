"""BiT (Liu et al., NeurIPS 2022, arXiv 2205.13016) on the ViT, as the authors' baseline code builds it.

Elastic binarization (`ElasticSteps`, from Learned Step-size Quantization) with a learnable layer-wise scale
alpha: signed inputs map to {-alpha, alpha} = alpha sign(x), non-negative ones (the attention probabilities) to
{0, alpha} = alpha clamp(round(x / alpha), 0, 1).  alpha is set at the first forward to 2 mean|x| (signed) or
4 mean|x| (unsigned) and clamped below at 1e-5.  Backward (LSQ), with n the number of elements of x and
q = x / alpha:  dx = g 1[Qn <= q <= 1] (Qn = -1 signed, 0 unsigned);  dalpha = sum(g sign(x)) / sqrt(n) (signed),
sum(g (1[q > 1] + 1[0 <= q <= 1] (round(q) - q))) / sqrt(n) (unsigned).
Linear layers (`BiTLinear`): a learnable per-feature shift (LearnableBias, init 0) then the signed elastic
binarizer on the input; BWN weights sign(W - mean W) * ||W||_1 / n (layer-wise scalars; identity backward).
Attention (`BiTAttention`): as the authors' code, Q_b from Q, and K_b and V_b from Q_b (each with its own step;
the published BiT binarizes K and V from K and V: README, "Where this implementation differs ...": BiT),
A = softmax(Q_b K_b^T / sqrt(D)), A_b through the unsigned binarizer, output A_b V_b.  No distillation (nor in
the authors' code).  GELU stays; the DPT decoder is the authors' ReActNet-style one (`ReActDPTDecoder`).
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


def _initial_step(x: torch.Tensor, signed: bool) -> torch.Tensor:
    """LSQ's initial step 2 mean|x| (signed) or 4 mean|x| (unsigned); under torch.distributed the mean over the
    processes (an all-reduce, so the first forward must run on every process, as DDP training does), so that every
    replica starts from the same alpha (the authors' replicas each kept their own first-batch value)."""
    value = x.detach().abs().mean() * (2.0 if signed else 4.0)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def _init_if_fresh(alpha: nn.Parameter, x: torch.Tensor, signed: bool) -> None:
    """The authors' first-call rule: a step still at its initial 1.0 is set from the batch, any other value kept."""
    if alpha.item() == 1.0:
        with torch.no_grad():
            alpha.copy_(_initial_step(x, signed))


class ElasticSteps(nn.Module):
    """A module with named learnable elastic step sizes (scalar parameters, init 1.0), as the authors' ``AlphaInit``.

    `binarize` applies BiT's elastic binarizer with the step ``name`` (equations in the module docstring).  At the
    first call of each step, a step still equal to 1.0 is set from the batch (`_initial_step`); any other value (a
    loaded state dict) is kept, as the authors' rule (`_init_if_fresh`).  No buffer marks the initialisation, so
    the state dict holds the authors' entries.
    """

    def __init__(self, *names: str) -> None:
        super().__init__()
        for name in names:
            self.register_parameter(name, nn.Parameter(torch.tensor(1.0)))
        self._checked: set[str] = set()  # steps already checked: skips reading alpha (a device sync) afterwards

    def binarize(self, name: str, x: torch.Tensor, signed: bool) -> torch.Tensor:
        alpha = getattr(self, name)
        if name not in self._checked:
            _init_if_fresh(alpha, x, signed)
            self._checked.add(name)
        return (_ElasticSigned if signed else _ElasticUnsigned).apply(x, alpha)


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
    """y = elastic_signed(x + b; input_clip_val) @ bwn_weight(W)^T + bias on (..., in_features) tokens; b per input
    feature (``move``).  Entries as the authors' layer but for its unused weight step size.  The binary weight is
    cached in eval mode (`binary.eval_cache`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.input_clip_val = nn.Parameter(torch.tensor(1.0))
        self.move = LearnableBias(in_features, dim=-1)
        self._input_ready = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.move(x)
        if not self._input_ready:
            _init_if_fresh(self.input_clip_val, x, signed=True)
            self._input_ready = True
        weight = self.eval_cached("binary_weight", lambda: bwn_weight(self.weight), self.weight)
        return F.linear(_ElasticSigned.apply(x, self.input_clip_val), weight, self.bias)


class BiTAttention(ElasticSteps):
    """BiT attention on (B, heads, N, head_dim) as the authors ran it: Q_b = elastic_signed(Q; clip_query), then
    K_b = elastic_signed(Q_b; clip_key) and V_b = elastic_signed(Q_b; clip_value), both from Q_b (k and v are not
    read), A_b = elastic_unsigned(softmax(Q_b K_b^T / sqrt(D)); clip_attn), output A_b V_b."""

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__("clip_query", "clip_key", "clip_value", "clip_attn")
        self.scale = head_dim**-0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self.binarize("clip_query", q, signed=True)
        k = self.binarize("clip_key", q, signed=True)
        v = self.binarize("clip_value", q, signed=True)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.binarize("clip_attn", attn, signed=False) @ v


@register("bit")
class BiT(ReActDPTDecoder):
    """BiT baseline: `BiTLinear` everywhere in the ViT, `BiTAttention`, GELU; ReActNet decoder."""

    def linear(self, in_features: int, out_features: int, bias: bool = True, role: str = "linear") -> nn.Module:
        return BiTLinear(in_features, out_features, bias=bias)

    def attention(self, head_dim: int, num_heads: int) -> nn.Module:
        return BiTAttention(head_dim, num_heads)
