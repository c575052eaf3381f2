import math

import pytest
import torch
from torch import nn

import binary
from binary.counting import BinaryLayer
from binary.methods.bit import BiTAttention, BiTLinear, ElasticSteps, bwn_weight


class _One(ElasticSteps):
    def __init__(self, signed):
        super().__init__("alpha")
        self.signed = signed

    def forward(self, x):
        return self.binarize("alpha", x, self.signed)


def _ready(signed, alpha):
    b = _One(signed)
    with torch.no_grad():
        b.alpha.fill_(alpha)
    return b


def test_elastic_signed_values_and_lsq_gradients():
    b = _ready(True, 0.5)
    x = torch.tensor([-2.0, -0.5, -0.2, 0.0, 0.3, 0.5, 0.9], requires_grad=True)
    y = b(x)
    g = torch.linspace(-1, 2, 7)
    y.backward(g)
    assert torch.allclose(y.detach(), 0.5 * torch.sign(x.detach()))
    assert torch.equal(x.grad, g * torch.tensor([0.0, 1, 1, 1, 1, 1, 0]))  # 1[-1 <= x / alpha <= 1]
    assert torch.allclose(b.alpha.grad, (g * torch.sign(x.detach())).sum() / math.sqrt(7))


def test_elastic_unsigned_values_and_lsq_gradients():
    b = _ready(False, 0.4)
    x = torch.tensor([0.0, 0.1, 0.19, 0.21, 0.35, 0.4, 0.7], requires_grad=True)
    y = b(x)
    g = torch.linspace(-1, 2, 7)
    y.backward(g)
    q = x.detach() / 0.4
    assert torch.allclose(y.detach(), torch.tensor([0.0, 0.0, 0.0, 0.4, 0.4, 0.4, 0.4]))
    middle = (q >= 0) & (q <= 1)
    assert torch.equal(x.grad, g * middle)
    step = torch.where(middle, torch.round(q) - q, (q > 1).float())
    assert torch.allclose(b.alpha.grad, (g * step).sum() / math.sqrt(7), atol=1e-6)


def test_elastic_alpha_initialised_once_from_first_batch_and_restored_from_state_dict():
    signed, unsigned = _One(True), _One(False)
    assert signed.alpha.item() == 1.0 and list(signed.state_dict()) == ["alpha"]  # the authors' entries only
    x = torch.tensor([0.1, -0.3, 0.6, -1.2])  # 2 mean|x| = 1.1: not the fresh value 1.0
    signed(x)
    unsigned(x.abs())
    assert torch.isclose(signed.alpha, 2 * x.abs().mean())
    assert torch.isclose(unsigned.alpha, 4 * x.abs().mean())
    signed(10 * x)
    assert torch.isclose(signed.alpha, 2 * x.abs().mean())  # no re-initialisation
    fresh = _One(True)
    fresh.load_state_dict(signed.state_dict())
    fresh(100 * x)
    assert torch.equal(fresh.alpha, signed.alpha)


def test_elastic_alpha_loaded_as_other_than_one_is_kept():
    """The authors' rule: only a step still at its initial 1.0 is set from the first batch."""
    b = _One(True)
    b.load_state_dict({"alpha": torch.tensor(0.7)})
    b(torch.tensor([5.0, -3.0]))
    assert b.alpha.item() == pytest.approx(0.7)


def test_elastic_alpha_clamped_positive():
    b = _ready(True, -3.0)
    assert torch.allclose(b(torch.tensor([2.0, -1.0])), torch.tensor([1e-5, -1e-5]))


def test_bwn_weight_layerwise_scale_and_identity_backward():
    w = torch.tensor([[0.3, -0.1], [0.2, 0.9]], requires_grad=True)
    wb = bwn_weight(w)
    g = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    wb.backward(g)
    mean, l1 = 0.325, 1.5 / 4
    assert torch.allclose(wb.detach(), torch.sign(w.detach() - mean) * l1)
    assert torch.equal(w.grad, g)


def test_bit_linear_shift_then_elastic_sign():
    torch.manual_seed(0)
    layer = BiTLinear(6, 3)
    assert isinstance(layer, BinaryLayer)
    with torch.no_grad():
        layer.move.bias.copy_(torch.linspace(-0.5, 0.5, 6))
    x = torch.randn(2, 4, 6)
    y = layer(x)
    shifted = x + torch.linspace(-0.5, 0.5, 6)
    alpha = 2 * shifted.abs().mean()
    assert torch.isclose(layer.input_clip_val, alpha)
    assert list(layer.state_dict()) == ["weight", "bias", "input_clip_val", "move.bias"]
    expected = (alpha * torch.sign(shifted)) @ bwn_weight(layer.weight).detach().T + layer.bias.detach()
    assert torch.allclose(y.detach(), expected, atol=1e-5)
    y.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name


def test_bit_attention_binarizes_k_and_v_from_binary_q_as_the_authors():
    """The authors' code reassigns q before binarizing k and v: K_b = alpha_k sign(Q_b), V_b = alpha_v sign(Q_b),
    with alpha_k = alpha_v = 2 mean|Q_b| = 2 alpha_q at the first batch; k and v are never read."""
    torch.manual_seed(0)
    attn = BiTAttention(head_dim=4, num_heads=2)
    assert list(attn.state_dict()) == ["clip_query", "clip_key", "clip_value", "clip_attn"]
    q = torch.randn(1, 2, 5, 4)
    out = attn(q, 3 * torch.randn(1, 2, 5, 4), 7 * torch.randn(1, 2, 5, 4))
    aq = 2 * q.abs().mean()
    assert torch.isclose(attn.clip_query, aq)
    assert torch.isclose(attn.clip_key, 2 * aq) and torch.isclose(attn.clip_value, 2 * aq)
    qb, kb, vb = aq * torch.sign(q), 2 * aq * torch.sign(q), 2 * aq * torch.sign(q)
    probs = torch.softmax(qb @ kb.transpose(-2, -1) / 2.0, dim=-1)
    a_attn = 4 * probs.mean()  # = 4 / N: each row of probabilities sums to 1
    assert torch.isclose(attn.clip_attn, a_attn) and torch.isclose(a_attn, torch.tensor(4 / 5))
    expected = (probs / a_attn).round().clamp(0, 1) * a_attn @ vb
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.equal(attn(q, torch.full_like(q, 1e3), torch.full_like(q, -1e3)), out)  # k, v ignored
    qr = q.clone().requires_grad_(True)
    attn(qr, q, q).sum().backward()
    assert qr.grad is not None and qr.grad.abs().sum() > 0


def test_bit_method_block_trains():
    torch.manual_seed(0)
    method = binary.get_method("bit")
    qkv, proj = method.linear(8, 24, role="qkv"), method.linear(8, 8, role="proj")
    fc1, fc2 = method.linear(8, 32, role="fc1"), method.linear(32, 8, role="fc2")
    attn = method.attention(4, 2)
    assert isinstance(fc1, BiTLinear) and isinstance(attn, BiTAttention)
    x = torch.randn(2, 6, 8)
    q, k, v = qkv(x).reshape(2, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    x = x + proj(attn(q, k, v).transpose(1, 2).reshape(2, 6, 8))
    x = x + fc2(method.vit_act(32)(fc1(x)))
    x.square().mean().backward()
    for name, p in nn.ModuleList([qkv, proj, fc1, fc2, attn]).named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
