"""binary.layers: shapes, conv arguments, BN modes, state_dict, and equality with float layers fed signs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binary.counting import BinaryLayer
from binary.functional import binarize_weight, channel_adaptive_bypass, dab
from binary.layers import (
    DAB,
    BiDenseConv2d,
    BiDenseConvTranspose2d,
    BiDenseLinear,
    BinaryWeightConv2d,
    BinaryWeightConvTranspose2d,
    BinaryWeightLinear,
    BypassDown,
    BypassUp,
    LearnableBias,
    RPReLU,
    ShiftSign,
)


def _dab_by_hand(x, dab_module, dims):
    mean = x.mean(dims, keepdim=True)
    s = x - (dab_module.k * mean + dab_module.b)
    return torch.exp(dab_module.a * (s.abs().mean(dims, keepdim=True) - 1)) * torch.sign(s)


def test_dab_init_and_layouts():
    torch.manual_seed(0)
    m = DAB(64)
    assert m.a.shape == m.k.shape == m.b.shape == (1, 64, 1, 1)
    assert torch.all(m.b == 0) and 0 < m.a.std() < 1e-2 and 0 < m.k.abs().max() < 1e-2
    x = torch.randn(2, 64, 5, 3)
    assert torch.allclose(m(x), _dab_by_hand(x, m, (2, 3)))
    t = DAB(6, dim=-1)
    assert t.a.shape == (1, 1, 6)
    x = torch.randn(2, 7, 6)
    assert torch.allclose(t(x), _dab_by_hand(x, t, (1,)))


@pytest.mark.parametrize("kwargs", [dict(), dict(groups=2), dict(dilation=2, padding=2), dict(bias=True),
                                    dict(groups=4, padding=1)])
def test_bidense_conv_equals_float_conv_on_signs(kwargs):
    """BN(conv(alpha*sign(s), gamma*sign(W))) + CFB(x), computed with plain float layers."""
    torch.manual_seed(1)
    kwargs = {"padding": 1, **kwargs}
    unit = BiDenseConv2d(8, 12, 3, **kwargs)
    for p in unit.binarizer.parameters():
        nn.init.normal_(p, std=0.3)
    assert isinstance(unit.conv, BinaryLayer) and unit.conv.weight.std() < 2e-3
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    y = unit(x)
    ref_conv = nn.Conv2d(8, 12, 3, bias=kwargs.get("bias", False), **{k: v for k, v in kwargs.items() if k != "bias"})
    with torch.no_grad():
        ref_conv.weight.copy_(binarize_weight(unit.conv.weight))
        if ref_conv.bias is not None:
            ref_conv.bias.copy_(unit.conv.bias)
    xb = _dab_by_hand(x.detach(), unit.binarizer, (2, 3))
    conv_out = ref_conv(xb)
    want = F.batch_norm(conv_out, None, None, unit.norm.weight, unit.norm.bias, training=True)
    want = want + channel_adaptive_bypass(x.detach(), 12)
    assert y.shape == (2, 12, 7, 7)
    assert torch.allclose(y, want, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None and unit.conv.weight.grad is not None and unit.binarizer.a.grad is not None


def test_bidense_conv_train_vs_eval_and_state_dict():
    torch.manual_seed(2)
    unit = BiDenseConv2d(4, 4, 3, padding=1)
    x = torch.randn(3, 4, 5, 5) * 2 + 1
    unit.train()
    y_train = unit(x)
    assert unit.norm.num_batches_tracked.item() == 1
    assert not torch.allclose(unit.norm.running_mean, torch.zeros(4))
    unit.eval()
    y_eval = unit(x)
    assert not torch.allclose(y_train, y_eval)
    conv_out = F.conv2d(_dab_by_hand(x, unit.binarizer, (2, 3)), binarize_weight(unit.conv.weight), padding=1)
    bn = unit.norm
    want = (conv_out - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    assert torch.allclose(y_eval, want * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1) + x, atol=1e-5)
    clone = BiDenseConv2d(4, 4, 3, padding=1).eval()
    clone.load_state_dict(unit.state_dict())
    assert torch.equal(clone(x), y_eval)
    assert set(unit.state_dict()) >= {"binarizer.a", "binarizer.k", "binarizer.b", "conv.weight", "norm.running_mean"}


def test_bidense_conv_rejects_stride_with_bypass_and_resolution_change():
    with pytest.raises(ValueError, match="BypassDown"):
        BiDenseConv2d(4, 8, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match="resampling bypass"):
        BiDenseConv2d(4, 8, 3)(torch.randn(1, 4, 6, 6))  # no padding: 4x4 output
    assert BiDenseConv2d(4, 8, 3, stride=2, padding=1, bypass=False)(torch.randn(2, 4, 6, 6)).shape == (2, 8, 3, 3)


def test_bypass_down_and_up():
    torch.manual_seed(3)
    down = BypassDown(4, 8, 3, 2, 1)
    x = torch.randn(2, 4, 9, 9)
    y = down(x)
    assert y.shape == (2, 8, 5, 5)
    want = down.body(x) + channel_adaptive_bypass(F.avg_pool2d(x, 3, 2, 1), 8)
    assert torch.allclose(y, want, atol=1e-6)
    up = BypassUp(6, 4, 2)
    x = torch.randn(2, 6, 3, 4)
    y = up(x)
    assert y.shape == (2, 4, 6, 8)
    assert torch.allclose(y, up.body(x) + channel_adaptive_bypass(x.repeat_interleave(2, 2).repeat_interleave(2, 3), 4),
                          atol=1e-6)
    assert isinstance(up.body.conv, BinaryWeightConvTranspose2d) and isinstance(up.body.conv, nn.ConvTranspose2d)


def test_bidense_conv_transpose_equals_float_on_signs_and_scale_per_input_channel():
    torch.manual_seed(4)
    unit = BiDenseConvTranspose2d(6, 4, 3, padding=1, bias=True)
    w = unit.conv.weight  # [C_in, C_out, k, k]
    scale = binarize_weight(w).abs().amax((1, 2, 3))
    assert torch.allclose(scale, w.abs().mean((1, 2, 3)))  # per input channel, as released
    x = torch.randn(2, 6, 5, 5)
    conv_out = F.conv_transpose2d(_dab_by_hand(x, unit.binarizer, (2, 3)), binarize_weight(w), unit.conv.bias,
                                  padding=1)
    want = F.batch_norm(conv_out, None, None, unit.norm.weight, unit.norm.bias, training=True)
    assert torch.allclose(unit(x), want + channel_adaptive_bypass(x, 4), atol=1e-5)
    with pytest.raises(ValueError, match="BypassUp"):
        BiDenseConvTranspose2d(6, 4, 2, stride=2)


def test_binary_conv_layers_equal_float_layers_on_binarized_weights():
    torch.manual_seed(5)
    conv = BinaryWeightConv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, bias=True)
    x = torch.sign(torch.randn(2, 4, 7, 7))
    w = conv.weight
    want = F.conv2d(x, torch.sign(w) * w.abs().mean((1, 2, 3), keepdim=True), conv.bias, 2, 1, 1, 2)
    assert torch.allclose(conv(x), want)
    assert isinstance(conv, BinaryLayer)


def test_bidense_linear_tokens():
    torch.manual_seed(6)
    lin = BiDenseLinear(6, 9)
    assert isinstance(lin.linear, BinaryWeightLinear) and isinstance(lin.linear, BinaryLayer)
    assert lin.norm.eps == 1e-6
    x = torch.randn(2, 5, 6, requires_grad=True)
    y = lin(x)
    assert y.shape == (2, 5, 9)
    w = lin.linear.weight
    wc = w - w.mean(-1, keepdim=True)
    xb = _dab_by_hand(x.detach(), lin.binarizer, (1,))
    want = F.layer_norm(xb @ (torch.sign(wc) * wc.abs().mean(-1, keepdim=True)).T, (9,), lin.norm.weight,
                        lin.norm.bias, 1e-6)
    want = want + channel_adaptive_bypass(x.detach(), 9, dim=-1)
    assert torch.allclose(y, want, atol=1e-5)
    y.sum().backward()
    assert x.grad.shape == x.shape and lin.binarizer.k.grad is not None


def test_learnable_bias_rprelu_shiftsign():
    lb = LearnableBias(3)
    with torch.no_grad():
        lb.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    x = torch.zeros(1, 3, 2, 2)
    assert torch.equal(lb(x)[0, :, 0, 0], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(LearnableBias(3, dim=-1)(torch.zeros(2, 4, 3)), torch.zeros(2, 4, 3))
    act = RPReLU(2)
    with torch.no_grad():
        act.shift_in.bias.copy_(torch.tensor([-1.0, 0.0]))
        act.shift_out.bias.copy_(torch.tensor([0.5, 0.5]))
    x = torch.tensor([[[[0.0]], [[-2.0]]]])
    assert torch.allclose(act(x).flatten(), torch.tensor([-0.25 + 0.5, -0.5 + 0.5]))
    tok = RPReLU(2, dim=-1)
    assert torch.allclose(tok(torch.tensor([[[-4.0, 4.0]]])), torch.tensor([[[-1.0, 4.0]]]))
    s = ShiftSign(2)
    with torch.no_grad():
        s.move.bias.copy_(torch.tensor([0.5, -0.5]))
    assert torch.equal(s(torch.tensor([[[[-0.25]], [[0.25]]]])).flatten(), torch.tensor([1.0, -1.0]))


def test_shift_sign_unit_is_not_fused():
    unit = BiDenseConv2d(4, 4, 1, binarizer="shift_sign")
    x = torch.randn(2, 4, 3, 3)
    conv_out = F.conv2d(torch.sign(x), binarize_weight(unit.conv.weight))
    want = F.batch_norm(conv_out, None, None, unit.norm.weight, unit.norm.bias, training=True) + x
    assert torch.allclose(unit(x), want, atol=1e-5)
    with pytest.raises(ValueError, match="available"):
        BiDenseConv2d(4, 4, 1, binarizer="xnor")


@pytest.mark.parametrize("transposed,train,momentum", [(False, True, 0.1), (False, False, 0.1), (True, True, None),
                                                      (False, True, None)])
def test_fused_unit_matches_composition_values_grads_and_running_stats(transposed, train, momentum):
    """The fused BiDense unit against DAB -> binary conv -> nn.BatchNorm2d -> + CFB built from separate pieces."""
    torch.manual_seed(7)
    cls = BiDenseConvTranspose2d if transposed else BiDenseConv2d
    unit = cls(6, 9, 3, padding=1, bias=True).double()
    unit.norm.momentum = momentum
    for p in [*unit.binarizer.parameters(), unit.norm.weight, unit.norm.bias]:
        nn.init.normal_(p, std=0.5)
    ref_bn = nn.BatchNorm2d(9, momentum=momentum).double()
    ref_bn.load_state_dict(unit.norm.state_dict())
    unit.train(train)
    ref_bn.train(train)
    conv = F.conv_transpose2d if transposed else F.conv2d
    x = torch.randn(3, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    params = [unit.binarizer.k, unit.binarizer.b, unit.binarizer.a, unit.conv.weight, unit.conv.bias]
    for _ in range(2):  # two steps: running statistics and num_batches_tracked evolve alike
        got = unit(x)
        xb = dab(x, unit.binarizer.k, unit.binarizer.b, unit.binarizer.a, (2, 3))
        want = ref_bn(conv(xb, binarize_weight(unit.conv.weight), unit.conv.bias, padding=1))
        want = want + channel_adaptive_bypass(x, 9)
        assert torch.allclose(got, want)
    assert torch.allclose(unit.norm.running_mean, ref_bn.running_mean)
    assert torch.allclose(unit.norm.running_var, ref_bn.running_var)
    assert unit.norm.num_batches_tracked == ref_bn.num_batches_tracked
    g = torch.randn_like(got)
    grads_got = torch.autograd.grad(got, [x, *params, unit.norm.weight, unit.norm.bias], g)
    grads_want = torch.autograd.grad(want, [x, *params, ref_bn.weight, ref_bn.bias], g)
    for p, q in zip(grads_got, grads_want, strict=True):
        assert torch.allclose(p, q)


def test_shared_unit_runs_three_times_before_backward():
    """The UperNet FPN smooth conv is one module applied three times, as released."""
    unit = BiDenseConv2d(4, 4, 3, padding=1)
    xs = [torch.randn(2, 4, s, s, requires_grad=True) for s in (8, 4, 2)]
    sum(unit(x).sum() for x in xs).backward()
    assert all(x.grad is not None for x in xs) and unit.norm.num_batches_tracked == 3
