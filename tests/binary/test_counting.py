"""binary.counting: MACs from shapes, the 1-bit weight keys and the per-layer rows of one forward pass, on layers
whose counts are worked out by hand (the totals are tested through `binary.summary` in test_report.py)."""

import pytest
import torch
from torch import nn

from binary.counting import BinaryLayer, binary_weight_keys, count_layers, shape_macs


class SignConv2d(BinaryLayer, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(torch.sign(x), torch.sign(self.weight), self.bias)


def test_shape_macs_by_hand():
    x = torch.zeros(2, 4, 6, 6)
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
    assert shape_macs(conv, x, conv(x)) == 2 * 8 * 3 * 3 * (4 // 2 * 9)  # out numel * C_in / groups * k^2
    up = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2)
    assert shape_macs(up, x, up(x)) == 2 * 4 * 6 * 6 * (6 // 2 * 4)  # in numel * C_out / groups * k^2
    lin = nn.Linear(5, 3)
    t = torch.zeros(2, 7, 5)
    assert shape_macs(lin, t, lin(t)) == 2 * 7 * 3 * 5
    with pytest.raises(TypeError, match="BatchNorm2d"):
        shape_macs(nn.BatchNorm2d(4), x, x)


def test_binary_weight_keys_under_every_name():
    shared = SignConv2d(2, 2, 1, bias=True)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), shared, shared)
    assert binary_weight_keys(model) == {"1.weight", "2.weight"}  # the bias stays 32-bit


def test_count_layers_rows():
    shared = SignConv2d(2, 2, 1, bias=True)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), shared, shared, nn.ReLU())
    rows = {row.name: row for row in count_layers(model, (1, 3, 4, 4))}
    assert list(rows) == ["0", "1", "2"]  # the ReLU owns nothing and is no conv; "3" is "2" under another name
    got = {name: (r.cls, r.binary_params, r.float_params, r.float_macs, r.binary_macs, r.calls)
           for name, r in rows.items()}
    assert got == {
        "0": ("Conv2d", 0, 3 * 2 * 9 + 2, 2 * 16 * 3 * 9, 0, 1),
        "1": ("BatchNorm2d", 0, 2 + 2 + 2 + 2 + 1, 0, 0, 1),
        "2": ("SignConv2d", 2 * 4, 2 * 2, 0, 2 * (2 * 16 * 2), 2),  # weight and bias once per name; two calls
    }
    assert rows["2"].names == ["2", "3"]
