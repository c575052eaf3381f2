"""Params and OPs of the UPerNet-ConvNeXt-T baselines and the cfb ablation at 1x3x480x480 (arXiv 2411.10346,
Table 1; convention in the README, "Training and evaluation", Parameters and OPs).

Locked to the figures `binary.summary` gives (the README table of every method), and the authors' count compared
to Table 1. One forward pass per method at the authors' profiling input, in a module-scoped fixture:

    Params = 32-bit state-dict entries + 1-bit weights / 32      (``params``; ``params_paper`` also divides the
                                                                   final full-precision classifier weight by 32)
    OPs    = float MACs + binary MACs / 64
"""

from __future__ import annotations

import pytest

from models.summary import TABLE1, summarize

ADE20K = 151
BINARY_TYPES = ("bnn", "react", "adabin", "bisrnet", "cfb")

# binary_type -> (1-bit weight entries, 32-bit entries, binary MACs) at 1x3x480x480, ADE20K head.
LOCKED = {
    "bnn": (39_925_728, 240_639, 64_814_107_392),
    "react": (39_925_728, 302_463, 64_814_107_392),
    "adabin": (39_925_728, 255_245, 64_814_107_392),
    "bisrnet": (41_861_088, 349_798, 65_809_435_392),
    "cfb": (39_667_680, 559_902, 29_247_720_192),
}
# Float MACs of every binary UPerNet: the full-precision stem (4x4 s4, 3 -> 96) and the 1x1 classifier
# (128 -> 151) at full resolution, computed here from the shapes.
STEM_MACS = (480 // 4) ** 2 * 96 * 3 * 4 * 4
CLASSIFIER_MACS = 480 * 480 * ADE20K * 128
# cfb, as the authors' ablation: out_conv (3x3, 96 -> 128 at 1/4 resolution, biased) and the head's 3x3 conv
# (128 -> 128 at full resolution) are full precision.
CFB_FLOAT_MACS = (480 // 4) ** 2 * 128 * 96 * 9 + 480 * 480 * 128 * 128 * 9
# The float mirror fp32_0 runs the same convolutions in 32 bits (tests/models/test_model_counts.py locks it).
FP32_0_MACS = 69_333_633_792
# The classifier's weight, which the authors' count divides by 32 (README, "Where this implementation differs ...",
# Params).
CLASSIFIER_PARAMS = ADE20K * 128


@pytest.fixture(scope="module")
def at_480() -> dict[str, dict]:
    return {
        binary_type: summarize("segmentation", "upernet", binary_type, (480, 480), num_classes=ADE20K)
        for binary_type in BINARY_TYPES
    }


@pytest.mark.parametrize("binary_type", BINARY_TYPES)
def test_counts_locked_at_480(at_480: dict[str, dict], binary_type: str) -> None:
    result = at_480[binary_type]
    binary_params, float_params, binary_macs = LOCKED[binary_type]
    assert result["input_shape"] == [1, 3, 480, 480]
    assert (result["binary_params"], result["float_params"]) == (binary_params, float_params)
    assert result["params"] == pytest.approx(float_params + binary_params / 32)
    assert result["params_paper"] == pytest.approx(float_params - CLASSIFIER_PARAMS * 31 / 32 + binary_params / 32)
    float_macs = STEM_MACS + CLASSIFIER_MACS + (CFB_FLOAT_MACS if binary_type == "cfb" else 0)
    assert result["float_macs"] == float_macs
    assert result["binary_macs"] == binary_macs
    assert result["ops_g"] == pytest.approx((float_macs + binary_macs / 64) / 1e9)


def test_cfb_ablation_counts_as_the_authors(at_480: dict[str, dict]) -> None:
    """The authors' CFB ablation model (full-precision out_conv and head 3x3 conv): Params 1,799.5K, OPs 40.5 G at
    480 x 480 (ADE20K head)."""
    result = at_480["cfb"]
    assert round(result["params_k"], 1) == 1799.5
    assert round(result["ops_g"], 1) == 40.5


@pytest.mark.parametrize("binary_type", ("bnn", "react", "adabin", "cfb"))
def test_binary_and_float_macs_add_up_to_the_float_mirror(at_480: dict[str, dict], binary_type: str) -> None:
    """Same convolutions as fp32_0; only BiSRNet's down-sampling module (two parallel 3x3 branches) differs."""
    result = at_480[binary_type]
    assert result["float_macs"] + result["binary_macs"] == FP32_0_MACS


def test_bisrnet_downsampling_adds_binary_work(at_480: dict[str, dict]) -> None:
    """BiSRNet's stage transitions (AvgPool 2x2, then two parallel C -> C 3x3 binary convs, concatenated) replace
    the 2x2 s2 C -> 2C convs: 18 C^2 weights instead of 8 C^2 at each of the three transitions (C = 96, 192, 384;
    inputs 120, 60, 30 pixels wide), each weight used (side / 2)^2 times."""
    bisrnet, bnn = at_480["bisrnet"], at_480["bnn"]
    transitions = ((120, 96), (60, 192), (30, 384))
    assert bisrnet["binary_params"] - bnn["binary_params"] == sum((18 - 8) * c * c for _, c in transitions)
    extra_macs = sum((side // 2) ** 2 * (18 - 8) * c * c for side, c in transitions)
    assert bisrnet["binary_macs"] - bnn["binary_macs"] == extra_macs


@pytest.mark.parametrize("binary_type", ("bnn", "react", "adabin", "bisrnet"))
def test_authors_count_matches_table1(at_480: dict[str, dict], binary_type: str) -> None:
    """Table 1: BNN 1,470K; ReActNet 1,531K; AdaBin 1,484K; BiSRNet 1,639K (within 0.5%)."""
    _, params_k, _ = TABLE1[binary_type]
    assert at_480[binary_type]["params_paper_k"] == pytest.approx(params_k, rel=5e-3)
