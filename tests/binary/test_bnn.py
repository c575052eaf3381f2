import torch
import torch.nn.functional as F
from torch import nn

import binary
from binary.counting import BinaryLayer


def test_bnn_conv_is_float_conv_on_signs_with_clipped_gradients():
    torch.manual_seed(0)
    conv = binary.get_method("bnn").conv(3, 4, 3, padding=1, bias=True, role="dw")[0]
    assert isinstance(conv, BinaryLayer) and conv.bias is not None
    with torch.no_grad():
        conv.weight.uniform_(-1.5, 1.5)
        conv.bias.normal_()
    x = (torch.randn(2, 3, 5, 5) * 1.5).requires_grad_(True)
    y = conv(x)
    g = torch.randn_like(y)
    y.backward(g)

    w = conv.weight.detach()
    xb, wb = torch.sign(x.detach()).requires_grad_(True), torch.sign(w).requires_grad_(True)  # no weight scale
    ref = F.conv2d(xb, wb, conv.bias.detach(), padding=1)
    ref.backward(g)
    assert torch.allclose(y, ref, atol=1e-5)
    assert torch.allclose(x.grad, xb.grad * (x.detach().abs() <= 1), atol=1e-5)
    assert torch.allclose(conv.weight.grad, wb.grad * (w.abs() <= 1), atol=1e-5)
    assert torch.allclose(conv.bias.grad, g.sum((0, 2, 3)), atol=1e-5)


def test_bnn_keeps_the_float_bias_choice_and_uses_gelu_in_blocks():
    method = binary.get_method("bnn")
    assert method.binary and not method.bypass
    assert method.conv(4, 4, 1, bias=False, role="psp")[0].bias is None
    assert method.up(4, 4, 2)[0].bias is not None
    assert isinstance(method.act(4, "block"), nn.GELU)
    for role in ("psp", "fusion", "head", "rcu"):
        assert isinstance(method.act(4, role), nn.ReLU)
