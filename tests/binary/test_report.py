"""binary.summary on a toy model whose Params, MACs and OPs are counted by hand (README, "Training and evaluation",
Parameters and OPs)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binary
from binary.counting import BinaryLayer


class SignConv2d(BinaryLayer, nn.Conv2d):
    """Minimal binary conv: sign(input) * sign(weight)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(torch.sign(x), torch.sign(self.weight), self.bias)


class SignConvTranspose2d(BinaryLayer, nn.ConvTranspose2d):
    pass


class SignLinear(BinaryLayer, nn.Linear):
    pass


class Wrapped(nn.Module):
    """A unit owning the MACs of its call: a binary 1x1 conv child run functionally (``fused``, the child's hook
    never fires, as in the fused BiDense units) or called (its hook fires and must not count twice)."""

    def __init__(self, channels: int, fused: bool) -> None:
        super().__init__()
        self.conv = SignConv2d(channels, channels, 1, bias=False)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return F.conv2d(torch.sign(x), torch.sign(self.conv.weight))
        return self.conv(x)

    def binary_macs(self, input: torch.Tensor, output: torch.Tensor) -> int:
        return output.numel() * self.conv.in_channels


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.wrap = Wrapped(4, fused=True)
        self.wrap2 = Wrapped(4, fused=False)
        self.down = SignConv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.shared = SignConv2d(8, 8, 1, bias=True)
        self.alias = self.shared
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.up = SignConvTranspose2d(8, 4, 2, stride=2, groups=2, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = SignLinear(4, 6)
        self.classifier = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.wrap2(self.wrap(self.bn(self.stem(x))))
        x = self.alias(self.shared(self.down(x)))
        x = self.up(self.grouped(x))
        return self.classifier(torch.relu(self.fc(self.pool(x).flatten(1))))


INPUT = (2, 3, 8, 8)
B = 2
# MACs per module, by hand (batch 2; 8x8 before `down`, 4x4 after, 8x8 after `up`).
STEM = B * 4 * 8 * 8 * (3 * 3 * 3)  # out numel * C_in * k^2
WRAP_BIN = B * 4 * 8 * 8 * 4  # each wrapper's binary_macs
DOWN = B * 8 * 4 * 4 * (4 * 3 * 3)
SHARED = B * 8 * 4 * 4 * 8  # per call, runs twice
GROUPED = B * 8 * 4 * 4 * (8 // 4 * 3 * 3)
UP = (B * 8 * 4 * 4) * (4 // 2 * 2 * 2)  # in numel * C_out / groups * k^2
FC = B * 6 * 4
CLS = B * 3 * 6
FLOAT_MACS = STEM + GROUPED + CLS
BINARY_MACS = 2 * WRAP_BIN + DOWN + 2 * SHARED + UP + FC

# State-dict entries, by hand.
BN_ENTRIES = 4 + 4 + 4 + 4 + 1  # weight, bias, running_mean, running_var, num_batches_tracked
CLS_ENTRIES = 6 * 3 + 3
ONE_BIT = 2 * 4 * 4 + 8 * 4 * 9 + 2 * (8 * 8) + 8 * 2 * 2 * 2 + 6 * 4  # wrap, wrap2, down, shared+alias, up, fc weights
FLOAT = (4 * 3 * 9 + 4) + BN_ENTRIES + 2 * 8 + 8 * 2 * 9 + 6 + CLS_ENTRIES


def test_hand_counted_totals():
    assert FLOAT_MACS == 13824 + 4608 + 36
    assert BINARY_MACS == 2 * 2048 + 9216 + 2 * 2048 + 2048 + 48
    assert (ONE_BIT, FLOAT) == (536, 316)

    s = binary.summary(Toy(), INPUT, classifier="classifier", print_table=False)
    assert s.input_shape == INPUT
    assert s.float_macs == FLOAT_MACS
    assert s.binary_macs == BINARY_MACS
    assert s.ops == pytest.approx(18468 + 19504 / 64)
    assert (s.binary_params, s.float_params) == (ONE_BIT, FLOAT)
    assert s.params == pytest.approx(316 + 536 / 32)
    # the authors' count divides the classifier's weight (6 x 3), not its bias
    assert s.params_paper == pytest.approx(316 - 18 + 18 / 32 + 536 / 32)
    assert s.memory_kib == pytest.approx((536 / 8 + 316 * 4) / 1024)
    assert s.compression_ratio == pytest.approx((536 + 316) * 4 / (536 / 8 + 316 * 4))


def test_rows():
    s = binary.summary(Toy(), INPUT, classifier="classifier", print_table=False)
    rows = {row.name: row for row in s.rows}
    assert list(rows) == [
        "stem", "bn", "wrap", "wrap.conv", "wrap2", "wrap2.conv", "down", "shared", "grouped", "up", "fc", "classifier"
    ]
    expected = {  # name: (class, 1-bit, 32-bit, float MACs, binary MACs, calls)
        "stem": ("Conv2d", 0, 4 * 3 * 9 + 4, STEM, 0, 1),
        "bn": ("BatchNorm2d", 0, BN_ENTRIES, 0, 0, 1),
        "wrap": ("Wrapped", 0, 0, 0, WRAP_BIN, 1),
        "wrap.conv": ("SignConv2d", 16, 0, 0, 0, 0),  # run functionally by its owner
        "wrap2": ("Wrapped", 0, 0, 0, WRAP_BIN, 1),
        "wrap2.conv": ("SignConv2d", 16, 0, 0, 0, 1),  # called inside its owner: counted by the owner only
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
    assert binary.summary(model, INPUT, print_table=False).params_paper == pytest.approx(316 + 536 / 32)
    model.classifier_name = "classifier"
    assert binary.summary(model, INPUT, print_table=False).params_paper == pytest.approx(298 + 18 / 32 + 536 / 32)
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
    assert d["params_k"] == pytest.approx((316 + 536 / 32) / 1e3)
    assert d["ops_g"] == pytest.approx((18468 + 19504 / 64) / 1e9)
    assert len(d["rows"]) == 12


def test_float_model_authors_count_equals_strict():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    s = binary.summary(model, (1, 3, 5, 5), classifier="1", print_table=False)
    assert s.params_paper == s.params == 3 * 4 * 9 + 4 + 4 * 2 + 2
