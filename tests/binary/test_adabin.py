import pytest
import torch

import binary
from binary.functional import sign_ste
from binary.methods.adabin import EDE, AdaBinActivation, Maxout, adabin_weight

POINTS = torch.tensor([-12.0, -2.0, -0.5, 0.0, 0.5, 1.0, 30.0])


def _ede(u):
    return 10 * 0.1 * (1 - torch.tanh(0.1 * u) ** 2)


def test_ede_sign_uses_fixed_k10_t01():
    u = POINTS.clone().requires_grad_(True)
    y = sign_ste(u, EDE)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.sign(POINTS))
    assert torch.allclose(u.grad, _ede(POINTS))


@pytest.mark.parametrize("groups", [1, 3])
def test_adabin_weight_values_and_gradient_through_mean_and_std(groups):
    """alpha_w divides by the authors' filter_size C_in * k * k = groups * (C_in / groups) * k * k."""
    torch.manual_seed(0)
    w = torch.randn(3, 2, 2, 2).requires_grad_(True)
    wb = adabin_weight(w, groups)
    g = torch.randn_like(wb)
    wb.backward(g)
    for o in range(3):
        wo, go = w[o].detach().flatten(), g[o].flatten()
        m, n = wo.numel(), groups * wo.numel()
        beta = wo.mean()
        alpha = ((wo - beta) ** 2).sum().div(n).sqrt()
        u = (wo - beta) / alpha
        assert torch.allclose(wb[o].detach().flatten(), alpha * torch.sign(u) + beta, atol=1e-6)
        # d/dw_j of alpha * s(u) + beta with s' the EDE, dbeta/dw_j = 1/m, dalpha/dw_j = (w_j - beta) / (n alpha)
        ds = _ede(u)
        dalpha = (wo - beta) / (n * alpha)
        expected = (go * ds - (go * ds).sum() / m - (go * ds * u).sum() * dalpha
                    + (go * torch.sign(u)).sum() * dalpha + go.sum() / m)
        assert torch.allclose(w.grad[o].flatten(), expected, atol=1e-5)


def test_adabin_activation_values_and_gradients():
    act = AdaBinActivation()
    assert act.alpha.item() == 1.0 and act.beta.item() == 0.0
    with torch.no_grad():
        act.alpha.fill_(1.5)
        act.beta.fill_(0.2)
    x = (POINTS / 4).clone().requires_grad_(True)
    y = act(x)
    g = torch.linspace(-1, 1, 7)
    y.backward(g)
    xp = (POINTS / 4 - 0.2) / 1.5
    psi = torch.clamp(2 - 2 * xp.abs(), min=0)  # ApproxSign derivative
    assert torch.allclose(y.detach(), 1.5 * (torch.sign(xp) + 0.2))
    assert torch.allclose(x.grad, g * psi)
    assert torch.allclose(act.alpha.grad, (g * (torch.sign(xp) + 0.2 - psi * xp)).sum(), atol=1e-6)
    assert torch.allclose(act.beta.grad, (g * (1.5 - psi)).sum(), atol=1e-6)


def test_maxout_values_and_gradients():
    m = Maxout(2)
    assert torch.equal(m.pos_scale, torch.ones(2)) and torch.equal(m.neg_scale, torch.full((2,), 0.25))
    x = torch.tensor([-2.0, 3.0]).view(1, 1, 1, 2).expand(1, 2, 1, 2).clone()
    y = m(x)
    y.sum().backward()
    assert torch.equal(y, torch.tensor([-0.5, 3.0]).view(1, 1, 1, 2).expand(1, 2, 1, 2))
    assert torch.equal(m.pos_scale.grad, torch.full((2,), 3.0))
    assert torch.equal(m.neg_scale.grad, torch.full((2,), -2.0))


def test_adabin_depthwise_conv_uses_the_authors_filter_size():
    """The ConvNeXt depthwise 7x7 (groups = C): alpha_w = sqrt(sum (W - beta_w)^2 / (49 C)), as the authors'
    ``filter_size = k * k * in_channels``."""
    torch.manual_seed(0)
    c = 4
    unit = binary.get_method("adabin").conv(c, c, 7, padding=3, groups=c, role="dw")
    conv = unit[0]
    w = conv.weight.detach()
    beta = w.mean((1, 2, 3), keepdim=True)
    alpha = ((w - beta) ** 2).sum((1, 2, 3), keepdim=True).div(49 * c).sqrt()
    assert torch.allclose(conv.binarize_weight(conv.weight).detach(), alpha * torch.sign(w - beta) + beta)
    assert unit(torch.randn(2, c, 9, 9)).shape == (2, c, 9, 9)


def test_adabin_method_units():
    method = binary.get_method("adabin")
    unit = method.conv(4, 8, 3, padding=1, bias=True, role="pw1")
    conv = unit[0]
    assert conv.bias is None and isinstance(conv.binarize_input, AdaBinActivation)
    assert conv.weight.std() > 1e-2  # PyTorch's default initialisation is kept
    assert unit(torch.randn(2, 4, 5, 5)).shape == (2, 8, 5, 5)
    assert isinstance(method.act(8, "block"), Maxout) and isinstance(method.act(8, "fusion"), Maxout)
    assert isinstance(method.act(8, "head"), torch.nn.ReLU)
