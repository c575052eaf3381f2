import torch
from torch import nn

import binary
from binary.counting import BinaryLayer
from binary.functional import CLIPPED_OPEN, sign_ste
from binary.methods.bibert import BiBERTAttention, BiBERTLinear, bibert_weight


def test_bibert_weight_unscaled_clipped_gradient_through_centring():
    w = torch.tensor([[0.2, -0.1, 0.05, 2.3], [-0.4, 0.6, 0.1, -0.3]], requires_grad=True)
    wb = bibert_weight(w)
    g = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.3, 0.7, -1.1, 0.2]])
    wb.backward(g)
    wd = w.detach()
    wc = wd - wd.mean(1, keepdim=True)
    assert torch.allclose(wb.detach(), torch.sign(wc) * wd.abs().mean(1, keepdim=True))
    h = g * (wc.abs() <= 1)
    assert (wc.abs() > 1).any()
    assert torch.allclose(w.grad, h - h.mean(1, keepdim=True), atol=1e-6)


def test_bibert_linear_is_float_linear_on_signs():
    torch.manual_seed(0)
    layer = BiBERTLinear(6, 3)
    assert isinstance(layer, BinaryLayer)
    x = (torch.randn(2, 4, 6) * 1.5).requires_grad_(True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    wb = bibert_weight(layer.weight).detach()
    assert torch.allclose(y, torch.sign(x.detach()) @ wb.T + layer.bias.detach(), atol=1e-6)
    assert torch.allclose(x.grad, (g @ wb) * (x.detach().abs() <= 1), atol=1e-6)


def test_bibert_bool_values_and_strict_clip():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    y = sign_ste(x, CLIPPED_OPEN, unsigned=True)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    assert torch.equal(x.grad, torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))


def test_bi_attention_forward_and_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4) * 1.5 for _ in range(3))
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = BiBERTAttention(head_dim=4, num_heads=2)(qr, kr, vr)
    g = torch.randn_like(out)
    out.backward(g)
    scores = torch.sign(q) @ torch.sign(k).transpose(-2, -1) / 2.0
    a = (scores > 0).float()  # no softmax
    assert torch.allclose(out, a @ torch.sign(v))
    # every quantizer of the attention: the authors' open clipped STE 1[|.| < 1]
    assert torch.allclose(vr.grad, (a.transpose(-2, -1) @ g) * (v.abs() < 1), atol=1e-5)
    ds = (g @ torch.sign(v).transpose(-2, -1)) * (scores.abs() < 1) / 2.0
    assert (scores.abs() == 1).any()  # the boundary is hit: scores are multiples of 1 / sqrt(D)
    assert torch.allclose(qr.grad, (ds @ torch.sign(k)) * (q.abs() < 1), atol=1e-5)
    assert torch.allclose(kr.grad, (ds.transpose(-2, -1) @ torch.sign(q)) * (k.abs() < 1), atol=1e-5)


def test_bi_attention_unit_inputs_get_no_gradient():
    q = torch.sign(torch.randn(1, 2, 5, 4)).requires_grad_(True)
    BiBERTAttention(head_dim=4, num_heads=2)(q, q, q).sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))


def test_bibert_linear_keeps_the_closed_boundary_on_unit_inputs():
    """The linears use the clamp trick, whose gradient under torch 2.1.2 includes |x| == 1: a {-1, 1} input (the
    output of the attention, A_b V_b) passes its gradient."""
    torch.manual_seed(0)
    layer = BiBERTLinear(6, 3)
    x = torch.sign(torch.randn(4, 6)).requires_grad_(True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, g @ bibert_weight(layer.weight).detach(), atol=1e-6)


def test_bibert_starts_from_dinov2():
    method = binary.get_method("bibert")
    assert method.pretrained_backbone and not method.standard


def test_bibert_method_block_trains():
    torch.manual_seed(0)
    method = binary.get_method("bibert")
    assert method.binary and not method.bypass
    qkv, proj = method.linear(8, 24, role="qkv"), method.linear(8, 8, role="proj")
    attn = method.attention(4, 2)
    assert isinstance(qkv, BiBERTLinear) and isinstance(attn, BiBERTAttention)
    assert isinstance(method.vit_act(8), nn.GELU)
    x = torch.randn(2, 6, 8)
    q, k, v = qkv(x).reshape(2, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    y = x + proj(attn(q, k, v).transpose(1, 2).reshape(2, 6, 8))
    y.square().mean().backward()
    for name, p in (*qkv.named_parameters(), *proj.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
