import pytest
import torch
from torch import nn

import binary
from binary.counting import BinaryLayer


@pytest.mark.parametrize("binary_type", ["bnn", "react", "adabin", "bisrnet"])
def test_cnn_baseline_block_transition_and_head_train(binary_type):
    torch.manual_seed(0)
    method = binary.get_method(binary_type)
    assert method.binary and not method.bypass and not method.standard
    dim = 4
    dw = method.conv(dim, dim, 7, padding=3, groups=dim, bias=True, role="dw")
    pw1, pw2 = method.conv(dim, 4 * dim, 1, bias=True, role="pw1"), method.conv(4 * dim, dim, 1, bias=True, role="pw2")
    act = method.act(4 * dim, "block")
    down = method.down(dim, 2 * dim, 2, 2)
    fusion, fusion_act = method.conv(2 * dim, dim, 3, padding=1, role="fusion"), method.act(dim, "fusion")
    head, head_act = method.conv(dim, dim, 3, padding=1, role="head"), method.act(dim, "head")
    for unit in (dw, pw1, pw2, fusion, head):
        assert isinstance(unit[0], BinaryLayer) and isinstance(unit[1], nn.BatchNorm2d)
    modules = nn.ModuleList([dw, pw1, pw2, act, down, fusion, fusion_act, head, head_act])

    x = torch.randn(2, dim, 8, 8)
    y = x + dw(x)
    y = y + pw2(act(pw1(y)))
    z = down(y)
    assert z.shape == (2, 2 * dim, 4, 4)
    out = head_act(head(fusion_act(fusion(z))))
    out.square().mean().backward()
    for pname, p in modules.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
