"""binary.summary on a toy model whose Params, MACs and OPs are counted by hand (PAPER.md 8.10)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binary
from binary.base import BinaryLayer


class SignConv2d(BinaryLayer, nn.Conv2d):
    """Minimal binary conv: sign(input) * sign(weight)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(torch.sign(x), torch.sign(self.weight), self.bias)


class SignConvTranspose2d(BinaryLayer, nn.ConvTranspose2d):
    pass


class SignLinear(BinaryLayer, nn.Linear):
    pass


class Wrapped(BinaryLayer, nn.Module):
    """A binary 1x1 conv written functionally, counting its own MACs, plus a float conv child."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 1, 1))
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(torch.sign(x), torch.sign(self.weight)) + self.proj(x)

    def binary_macs(self, input: torch.Tensor, output: torch.Tensor) -> int:
        return output.numel() * self.weight.shape[1]


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.wrap = Wrapped(4)
        self.down = SignConv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.shared = SignConv2d(8, 8, 1, bias=True)
        self.alias = self.shared
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.up = SignConvTranspose2d(8, 4, 2, stride=2, groups=2, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = SignLinear(4, 6)
        self.classifier = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.wrap(self.bn(self.stem(x)))
        x = self.alias(self.shared(self.down(x)))
        x = self.up(self.grouped(x))
        return self.classifier(torch.relu(self.fc(self.pool(x).flatten(1))))


INPUT = (2, 3, 8, 8)
B = 2
# MACs per module, by hand (batch 2; 8x8 before `down`, 4x4 after, 8x8 after `up`).
STEM = B * 4 * 8 * 8 * (3 * 3 * 3)  # out numel * C_in * k^2
WRAP_BIN = B * 4 * 8 * 8 * 4  # its binary_macs
WRAP_PROJ = B * 4 * 8 * 8 * 4  # 1x1 float child
DOWN = B * 8 * 4 * 4 * (4 * 3 * 3)
SHARED = B * 8 * 4 * 4 * 8  # per call, runs twice
GROUPED = B * 8 * 4 * 4 * (8 // 4 * 3 * 3)
UP = (B * 8 * 4 * 4) * (4 // 2 * 2 * 2)  # in numel * C_out / groups * k^2
FC = B * 6 * 4
CLS = B * 3 * 6
FLOAT_MACS = STEM + WRAP_PROJ + GROUPED + CLS
BINARY_MACS = WRAP_BIN + DOWN + 2 * SHARED + UP + FC

# State-dict entries, by hand.
BN_ENTRIES = 4 + 4 + 4 + 4 + 1  # weight, bias, running_mean, running_var, num_batches_tracked
CLS_ENTRIES = 6 * 3 + 3
ONE_BIT = 4 * 4 + 8 * 4 * 9 + 2 * (8 * 8) + 8 * 2 * 2 * 2 + 6 * 4  # wrap, down, shared+alias, up, fc weights
FLOAT = (4 * 3 * 9 + 4) + BN_ENTRIES + 4 * 4 + 2 * 8 + 8 * 2 * 9 + 6 + CLS_ENTRIES


def test_hand_counted_totals():
    assert FLOAT_MACS == 13824 + 2048 + 4608 + 36
    assert BINARY_MACS == 2048 + 9216 + 2 * 2048 + 2048 + 48
    assert (ONE_BIT, FLOAT) == (520, 332)

    s = binary.summary(Toy(), INPUT, classifier="classifier", print_table=False)
    assert s.input_shape == INPUT
    assert s.float_macs == FLOAT_MACS
    assert s.binary_macs == BINARY_MACS
    assert s.ops == pytest.approx(20516 + 17456 / 64)
    assert (s.binary_params, s.float_params) == (ONE_BIT, FLOAT)
    assert s.params == pytest.approx(332 + 520 / 32)
    assert s.params_paper == pytest.approx(332 - 21 + 21 / 32 + 520 / 32)
    assert s.memory_kib == pytest.approx((520 / 8 + 332 * 4) / 1024)
    assert s.compression_ratio == pytest.approx((520 + 332) * 4 / (520 / 8 + 332 * 4))


def test_rows():
    s = binary.summary(Toy(), INPUT, classifier="classifier", print_table=False)
    rows = {row.name: row for row in s.rows}
    assert list(rows) == ["stem", "bn", "wrap", "wrap.proj", "down", "shared", "grouped", "up", "fc", "classifier"]
    expected = {  # name: (class, 1-bit, 32-bit, float MACs, binary MACs, calls)
        "stem": ("Conv2d", 0, 4 * 3 * 9 + 4, STEM, 0, 1),
        "bn": ("BatchNorm2d", 0, BN_ENTRIES, 0, 0, 1),
        "wrap": ("Wrapped", 16, 0, 0, WRAP_BIN, 1),
        "wrap.proj": ("Conv2d", 0, 16, WRAP_PROJ, 0, 1),
        "down": ("SignConv2d", 288, 0, 0, DOWN, 1),
        "shared": ("SignConv2d", 2 * 64, 2 * 8, 0, 2 * SHARED, 2),
        "grouped": ("Conv2d", 0, 144, GROUPED, 0, 1),
        "up": ("SignConvTranspose2d", 64, 0, 0, UP, 1),
        "fc": ("SignLinear", 24, 6, 0, FC, 1),
        "classifier": ("Linear", 0, CLS_ENTRIES, CLS, 0, 1),
    }
    for name, values in expected.items():
        row = rows[name]
        assert (row.cls, row.binary_params, row.float_params, row.float_macs, row.binary_macs, row.calls) == values
    assert rows["shared"].names == ["shared", "alias"]


def test_classifier_default_and_unknown():
    model = Toy()
    assert binary.summary(model, INPUT, print_table=False).params_paper == pytest.approx(332 + 520 / 32)
    model.classifier_name = "classifier"
    assert binary.summary(model, INPUT, print_table=False).params_paper == pytest.approx(311 + 21 / 32 + 520 / 32)
    with pytest.raises(ValueError, match="'head.cls'"):
        binary.summary(model, INPUT, classifier="head.cls", print_table=False)


def test_modes_restored_and_hooks_removed():
    model = Toy().train()
    model.bn.eval()
    binary.summary(model, INPUT, print_table=False)
    assert model.training and model.stem.training and not model.bn.training
    assert model.bn.num_batches_tracked.item() == 0  # the pass ran in eval mode
    assert all(not m._forward_hooks for m in model.modules())


def test_binary_layer_without_counting_rule_is_rejected():
    class Odd(BinaryLayer, nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(TypeError, match="Odd"):
        binary.summary(nn.Sequential(Odd()), (1, 2), print_table=False)


def test_to_dict_json_and_printed_table(capsys):
    s = binary.summary(Toy(), INPUT, classifier="classifier")
    printed = capsys.readouterr().out
    assert printed.strip() == str(s).strip()
    for text in ("shared =alias", "SignConvTranspose2d", "Params (strict)", "OPs", "KiB", "compression ratio"):
        assert text in printed
    d = json.loads(json.dumps(s.to_dict()))
    assert d["input_shape"] == list(INPUT)
    assert d["binary_macs"] == BINARY_MACS and d["float_params"] == FLOAT
    assert d["params_k"] == pytest.approx((332 + 520 / 32) / 1e3)
    assert d["ops_g"] == pytest.approx((20516 + 17456 / 64) / 1e9)
    assert len(d["rows"]) == 10
