import torch
import torch.nn.functional as F
from torch import nn

import binary
from binary.counting import BinaryLayer
from binary.functional import sign_ste
from binary.layers import BinaryConv2d, BinaryConvTranspose2d, LearnableBias, RPReLU, ShiftSign

POINTS = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])


def test_sign_ste_values_and_clipped_gradient():
    x = POINTS.clone().requires_grad_(True)
    y = sign_ste(x)
    y.backward(torch.arange(1.0, 8.0))
    assert torch.equal(y.detach(), torch.tensor([-1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0]))
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]))


def test_rsign_shift_and_approx_sign_gradient():
    rsign = ShiftSign(2)
    with torch.no_grad():
        rsign.move.bias.copy_(torch.tensor([0.25, -0.5]))
    x = torch.stack([POINTS, POINTS]).reshape(1, 2, 7, 1).requires_grad_(True)
    y = rsign(x)
    y.sum().backward()
    s = x.detach() + torch.tensor([0.25, -0.5]).view(1, 2, 1, 1)
    expected_grad = torch.clamp(2 - 2 * s.abs(), min=0)  # Bi-Real: 2 + 2s on [-1, 0), 2 - 2s on [0, 1)
    assert torch.equal(y.detach(), torch.sign(s))
    assert torch.allclose(x.grad, expected_grad)
    assert torch.allclose(rsign.move.bias.grad.view(2), expected_grad.sum((0, 2, 3)))


def _react_conv(**kwargs):
    conv = binary.get_method("react").conv(**kwargs)[0]
    with torch.no_grad():
        conv.weight.uniform_(-1.5, 1.5)  # some weights outside [-1, 1]: their gradient is clipped
        conv.binarize_input.move.bias.normal_()
    return conv


def test_react_conv_equals_float_conv_on_signs_with_clipped_weight_gradient():
    torch.manual_seed(0)
    conv = _react_conv(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2, groups=2)
    x = torch.randn(2, 4, 9, 9)
    y = conv(x)
    g = torch.randn_like(y)
    y.backward(g)

    w = conv.weight.detach()
    wb = (torch.sign(w) * w.abs().mean((1, 2, 3), keepdim=True)).requires_grad_(True)
    xb = torch.sign(x + conv.binarize_input.move.bias.detach().view(1, -1, 1, 1))
    ref = F.conv2d(xb, wb, stride=2, padding=2, dilation=2, groups=2)
    ref.backward(g)
    assert torch.allclose(y, ref, atol=1e-5)
    assert torch.allclose(conv.weight.grad, wb.grad * (w.abs() <= 1), atol=1e-5)
    assert (w.abs() > 1).any() and (conv.weight.grad[w.abs() > 1] == 0).all()


def test_react_transposed_conv_scales_per_input_channel():
    torch.manual_seed(1)
    up = binary.get_method("react").up(3, 5, 2)
    conv = up[0]
    assert isinstance(conv, BinaryConvTranspose2d) and isinstance(conv, BinaryLayer) and conv.bias is None
    x = torch.randn(2, 3, 4, 4)
    w = conv.weight.detach()  # [C_in, C_out, k, k]
    expected = F.conv_transpose2d(torch.sign(x), torch.sign(w) * w.abs().mean((1, 2, 3), keepdim=True), stride=2)
    assert torch.allclose(conv(x), expected, atol=1e-7)
    assert up(x).shape == (2, 5, 8, 8)


def test_react_method_units_and_activations():
    method = binary.get_method("react")
    assert method.binary and not method.bypass and not method.standard
    unit = method.conv(8, 16, 1, bias=True, role="pw1")
    assert isinstance(unit[0], BinaryConv2d) and isinstance(unit[0], BinaryLayer)
    assert unit[0].bias is None and isinstance(unit[1], nn.BatchNorm2d)
    assert method.conv(8, 8, 3, padding=1, bias=True, role="rcu")[0].bias is not None
    assert unit[0].weight.std() < 5e-3  # N(0, 1e-3^2) initialisation
    assert method.down(8, 16, 2, 2)(torch.randn(1, 8, 6, 6)).shape == (1, 16, 3, 3)
    block = method.act(8, "block")
    assert isinstance(block[0], LearnableBias) and isinstance(block[1], nn.PReLU)
    assert isinstance(method.act(8, "psp")[1], nn.PReLU)
    assert isinstance(method.act(8, "fusion"), RPReLU)
    assert isinstance(method.act(8, "head"), nn.ReLU)
