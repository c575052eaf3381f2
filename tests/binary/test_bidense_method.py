"""The `bidense` and `cfb` methods: which layers they hand to the models, as released."""

import pytest
import torch
from torch import nn

import binary
from binary.layers import (
    DAB,
    BiDenseConv2d,
    BiDenseConvTranspose2d,
    BypassDown,
    BypassUp,
    LearnableBias,
    RPReLU,
    ShiftSign,
)


@pytest.mark.parametrize("binary_type", ["bidense", "cfb"])
def test_conv_units_and_flags(binary_type):
    method = binary.get_method(binary_type)
    assert method.binary and method.bypass and not method.standard
    binarizer = DAB if binary_type == "bidense" else ShiftSign
    unit = method.conv(8, 16, 3, padding=1, groups=2, bias=True, role="smooth")
    assert isinstance(unit, BiDenseConv2d) and isinstance(unit.binarizer, binarizer)
    assert unit.conv.groups == 2 and unit.conv.bias is not None and unit.bypass
    assert unit(torch.randn(2, 8, 5, 5)).shape == (2, 16, 5, 5)
    down = method.down(8, 16, 2, 2)
    assert isinstance(down, BypassDown) and isinstance(down.body.binarizer, binarizer)
    assert down(torch.randn(2, 8, 6, 6)).shape == (2, 16, 3, 3)
    assert isinstance(method.conv(8, 16, 3, stride=2, padding=1), BypassDown)
    up = method.up(8, 4, 4)
    assert isinstance(up, BypassUp) and up(torch.randn(2, 8, 3, 3)).shape == (2, 4, 12, 12)
    tconv = method.conv_transpose(8, 4, 3, padding=1)
    assert isinstance(tconv, BiDenseConvTranspose2d) and tconv(torch.randn(1, 8, 4, 4)).shape == (1, 4, 4, 4)
    assert isinstance(method.conv_transpose(8, 4, 2, stride=2), BypassUp)
    with pytest.raises(ValueError, match="kernel_size == stride"):
        method.conv_transpose(8, 4, 3, stride=2)


def test_cfb_keeps_out_conv_and_head_conv_full_precision():
    """The authors' cfb ablation: out_conv1 a biased float conv without BatchNorm or bypass; the segmentation head's
    3x3 a bias-free float conv + BatchNorm; the depth head's a biased float conv (``float_head``); bidense binarizes
    both."""
    cfb, bidense = binary.get_method("cfb"), binary.get_method("bidense")
    out = cfb.conv(96, 128, 3, padding=1, role="out")
    assert type(out) is nn.Conv2d and out.bias is not None
    head = cfb.conv(128, 128, 3, padding=1, role="head")
    assert type(head[0]) is nn.Conv2d and head[0].bias is None and isinstance(head[1], nn.BatchNorm2d)
    assert cfb.float_head and not bidense.float_head
    assert isinstance(bidense.conv(96, 128, 3, padding=1, role="out"), BiDenseConv2d)
    assert isinstance(bidense.conv(128, 128, 3, padding=1, role="head"), BiDenseConv2d)


def test_activations_by_role():
    method = binary.get_method("bidense")
    assert isinstance(method.act(8, "head"), nn.ReLU)
    assert isinstance(method.act(8, "fusion"), RPReLU)
    for role in ("block", "psp", "rcu"):
        act = method.act(8, role)
        assert isinstance(act[0], LearnableBias) and isinstance(act[1], nn.PReLU)
        assert act[1].weight.shape == (8,)


def test_vit_pieces_are_bivit():
    from binary.transformer_layers import BiViTAttention, BiViTLinear

    method = binary.get_method("bidense")
    qkv, fc1 = method.linear(8, 24, role="qkv"), method.linear(8, 32, role="fc1")
    assert isinstance(qkv, BiViTLinear) and qkv.learnable_scale
    assert isinstance(fc1, BiViTLinear) and not fc1.learnable_scale
    assert method.linear(8, 8, role="proj").learnable_scale and not method.linear(8, 8, role="fc2").learnable_scale
    attn = method.attention(4, 2)
    assert isinstance(attn, BiViTAttention)
    q = torch.randn(1, 2, 5, 4)
    assert attn(q, q, q).shape == (1, 2, 5, 4)
    assert isinstance(method.vit_act(8), nn.GELU)


def test_trains_one_step():
    torch.manual_seed(0)
    method = binary.get_method("bidense")
    model = nn.Sequential(method.conv(3, 8, 3, padding=1), method.act(8), method.down(8, 16, 2, 2),
                          method.conv(16, 4, 1), method.up(4, 4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 8, 8)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert changed == len(before)
