"""Params and OPs of UPerNet-ConvNeXt-T against the released code's figures (README, "Training and
evaluation", Parameters and OPs).

Params do not depend on the input, so they are counted on a small input; the OPs figures are measured at the
authors' profiling input 1x3x480x480 (one forward pass each, in a module-scoped fixture).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json

import pytest

from models.summary import main, summarize

ADE20K, VOC = 151, 22


@pytest.fixture(scope="module")
def at_480(tmp_path_factory) -> dict[str, dict]:
    """fp32_0 through `summarize`, bidense through the CLI on an ADE20K config (default crop 480)."""
    config = tmp_path_factory.mktemp("segmentation") / "upernet_bidense_ade20k.yaml"
    config.write_text("DATASET:\n  DATASET: 'ade20k'\nMODEL:\n  MODEL_TYPE: 'upernet'\n  BINARY_TYPE: 'bidense'\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(config), "--json"]) == 0
    return {
        "bidense": json.loads(out.getvalue()),
        "fp32_0": summarize("segmentation", "upernet", "fp32_0", (480, 480), num_classes=ADE20K),
    }


@functools.cache
def _params(binary_type: str, num_classes: int = ADE20K) -> dict:
    return summarize("segmentation", "upernet", binary_type, (32, 32), num_classes=num_classes)


@pytest.mark.parametrize(
    ("binary_type", "num_classes", "strict_k", "paper_k"),
    [
        ("fp32", ADE20K, 40_020.2, 40_020.2),  # Table 1 ConvNeXt*: 40,020K
        ("fp32_0", ADE20K, 40_166.4, 40_166.4),
        ("bidense", ADE20K, 1_644.7, 1_625.9),  # Table 1 BiDense: 1,626K
        ("bidense", VOC, 1_628.0, None),
        ("bnn", ADE20K, None, 1_469.6),  # Table 1: 1,470K
        ("react", ADE20K, None, 1_531.4),  # 1,531K
        ("adabin", ADE20K, None, 1_484.2),  # 1,484K
        ("bisrnet", ADE20K, None, 1_639.2),  # 1,639K
    ],
)
def test_params_match_released_counts(binary_type: str, num_classes: int, strict_k, paper_k) -> None:
    result = _params(binary_type, num_classes)
    if strict_k is not None:
        assert result["params_k"] == pytest.approx(strict_k, rel=5e-3)
    if paper_k is not None:
        assert result["params_paper_k"] == pytest.approx(paper_k, rel=5e-3)


def test_bidense_counts_are_exact_where_the_structure_fixes_them() -> None:
    """Tight checks: strict count to 0.05K, and the VOC head differs by exactly 129 classes x (128 + 1)."""
    ade, voc = _params("bidense", ADE20K), _params("bidense", VOC)
    assert ade["params_k"] == pytest.approx(1_644.7, abs=0.05)
    assert voc["params_k"] == pytest.approx(1_628.0, abs=0.05)
    assert ade["float_params"] - voc["float_params"] == (ADE20K - VOC) * (128 + 1)
    assert ade["binary_params"] == voc["binary_params"]


def test_bidense_ops_at_480(at_480: dict[str, dict]) -> None:
    result = at_480["bidense"]
    assert result["input_shape"] == [1, 3, 480, 480]
    assert result["float_macs"] / 1e9 == pytest.approx(4.520, rel=5e-3)
    assert result["binary_macs"] / 1e9 == pytest.approx(64.81, rel=5e-3)
    assert result["ops_g"] == pytest.approx(5.532, rel=5e-3)
    assert result["params_k"] == pytest.approx(1_644.7, abs=0.05)
    assert result["table1"] == {"row": "BiDense (Ours)", "params_k": 1_626, "ops_g": 5.37}


def test_fp32_0_ops_at_480(at_480: dict[str, dict]) -> None:
    result = at_480["fp32_0"]
    assert result["binary_macs"] == 0 and result["binary_params"] == 0
    assert result["ops_g"] == pytest.approx(69.334, rel=5e-3)
    # Same convolutions, so the binary model's MACs of both precisions add up to the float mirror's.
    bidense = at_480["bidense"]
    assert bidense["float_macs"] + bidense["binary_macs"] == pytest.approx(result["float_macs"], rel=1e-3)


def test_summary_cli_json(tmp_path, capsys) -> None:
    config = tmp_path / "segmentation" / "upernet_bidense_pascal_voc.yaml"
    config.parent.mkdir()
    config.write_text("DATASET:\n  DATASET: 'pascal_voc'\nMODEL:\n  MODEL_TYPE: 'upernet'\n"
                      "  BINARY_TYPE: 'bidense'\n  NUM_CLASSES: 22\n")
    assert main([str(config), "--input", "32", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_shape"] == [1, 3, 32, 32]
    assert out["params_k"] == pytest.approx(1_628.0, abs=0.05)
    for key in ("params_paper_k", "ops_g", "binary_params", "float_params"):
        assert key in out
    assert "table1" not in out


def test_summary_cli_table_beside_paper(tmp_path, capsys) -> None:
    config = tmp_path / "segmentation" / "upernet_fp32_0_ade20k.yaml"
    config.parent.mkdir()
    config.write_text("MODEL:\n  MODEL_TYPE: 'upernet'\n  BINARY_TYPE: 'fp32_0'\n  NUM_CLASSES: 151\n")
    assert main([str(config), "--input", "32", "32"]) == 0
    assert "Table 1" not in capsys.readouterr().out  # Table 1 figures only at its 480x480 input
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.yaml")])
    assert "config not found" in capsys.readouterr().err
