import pytest
import torch
import torch.nn.functional as F

import binary
from binary.layers import RPReLU
from binary.methods.bisrnet import BiSRDown, BiSRSign


def test_bisr_sign_redistribution_and_scalable_tanh_gradients():
    sign = BiSRSign(2)
    with torch.no_grad():
        sign.k.copy_(torch.tensor([1.5, -0.5]).view(1, 2, 1, 1))
        sign.b.copy_(torch.tensor([0.1, 0.3]).view(1, 2, 1, 1))
        sign.beta.fill_(2.0)
    pts = torch.tensor([-2.0, -0.5, 0.0, 0.4, 1.0, 3.0])
    x = torch.stack([pts, pts]).view(1, 2, 6, 1).requires_grad_(True)
    y = sign(x)
    g = torch.linspace(-1, 1, 12).view(1, 2, 6, 1)
    y.backward(g)
    k, b = torch.tensor([1.5, -0.5]).view(1, 2, 1, 1), torch.tensor([0.1, 0.3]).view(1, 2, 1, 1)
    xr = k * x.detach() + b
    sech2 = 1 - torch.tanh(2.0 * xr) ** 2
    assert torch.equal(y.detach(), torch.sign(xr))
    assert torch.allclose(x.grad, g * 2.0 * sech2 * k, atol=1e-6)
    assert torch.allclose(sign.k.grad, (g * 2.0 * sech2 * x.detach()).sum((0, 2, 3), keepdim=True), atol=1e-6)
    assert torch.allclose(sign.b.grad, (g * 2.0 * sech2).sum((0, 2, 3), keepdim=True), atol=1e-6)
    assert torch.allclose(sign.beta.grad, (g * xr * sech2).sum().view(1), atol=1e-6)


def test_bisr_down_doubles_channels_with_two_residual_branches():
    torch.manual_seed(0)
    down = binary.get_method("bisrnet").down(4, 8, 2, 2)
    assert isinstance(down, BiSRDown)
    x = torch.randn(2, 4, 6, 6)
    y = down(x)
    assert y.shape == (2, 8, 3, 3)
    p = F.avg_pool2d(x, 2, 2)
    for i in range(2):
        conv = down.convs[i]
        w = conv.weight.detach()
        xb = torch.sign(p * conv.binarize_input.k + conv.binarize_input.b)
        branch = F.conv2d(xb, torch.sign(w) * w.abs().mean((1, 2, 3), keepdim=True), padding=1)
        assert isinstance(down.acts[i], RPReLU)
        assert torch.allclose(y[:, 4 * i:4 * (i + 1)], p + down.acts[i](branch), atol=1e-6)
    y.square().sum().backward()
    for name, param in down.named_parameters():
        assert param.grad is not None, name
    with pytest.raises(ValueError, match="4 -> 6"):
        binary.get_method("bisrnet").down(4, 6, 2, 2)


def test_bisrnet_conv_unit():
    unit = binary.get_method("bisrnet").conv(4, 8, 1, bias=True, role="pw1")
    assert isinstance(unit[0].binarize_input, BiSRSign) and unit[0].bias is None
    assert unit(torch.randn(2, 4, 5, 5)).shape == (2, 8, 5, 5)
