import math

import torch
from torch import nn

import binary
from binary.counting import BinaryLayer
from binary.methods.bit import BiTAttention, BiTLinear, ElasticBinarizer, bwn_weight


def _ready(signed, alpha):
    b = ElasticBinarizer(signed)
    with torch.no_grad():
        b.alpha.fill_(alpha)
        b.initialized.fill_(True)
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
    signed, unsigned = ElasticBinarizer(True), ElasticBinarizer(False)
    x = torch.tensor([0.1, -0.3, 0.6, -1.0])
    signed(x)
    unsigned(x.abs())
    assert torch.isclose(signed.alpha, 2 * x.abs().mean()) and bool(signed.initialized)
    assert torch.isclose(unsigned.alpha, 4 * x.abs().mean())
    signed(10 * x)
    assert torch.isclose(signed.alpha, 2 * x.abs().mean())  # no re-initialisation
    fresh = ElasticBinarizer(True)
    fresh.load_state_dict(signed.state_dict())
    fresh(100 * x)
    assert torch.equal(fresh.alpha, signed.alpha)


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
    expected = (alpha * torch.sign(shifted)) @ bwn_weight(layer.weight).detach().T + layer.bias.detach()
    assert torch.allclose(y.detach(), expected, atol=1e-5)
    y.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name


def test_bit_attention_binarizes_k_and_v_from_themselves():
    torch.manual_seed(0)
    attn = BiTAttention(head_dim=4, num_heads=2)
    q, k, v = torch.randn(1, 2, 5, 4), 3 * torch.randn(1, 2, 5, 4), 7 * torch.randn(1, 2, 5, 4)
    out = attn(q, k, v)
    aq, ak, av = (2 * t.abs().mean() for t in (q, k, v))
    assert torch.isclose(attn.binarize_k.alpha, ak) and torch.isclose(attn.binarize_v.alpha, av)
    probs = torch.softmax((aq * torch.sign(q)) @ (ak * torch.sign(k)).transpose(-2, -1) / 2.0, dim=-1)
    a_attn = 4 * probs.mean()  # = 4 / N: each row of probabilities sums to 1
    assert torch.isclose(attn.binarize_attn.alpha, a_attn) and torch.isclose(a_attn, torch.tensor(4 / 5))
    expected = (probs / a_attn).round().clamp(0, 1) * a_attn @ (av * torch.sign(v))
    assert torch.allclose(out, expected, atol=1e-5)


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
