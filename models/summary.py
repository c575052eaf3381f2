"""Params and OPs of a configured model: ``python -m models.summary CONFIG [--input H W] [--json]``.

Builds ``MODEL.MODEL_TYPE`` with ``MODEL.BINARY_TYPE`` from a segmentation or depth YAML and counts it with
`binary.summary` (the Params and OPs of arXiv 2411.10346, Table 1; convention in the README, "Training and
evaluation", Parameters and OPs) at the config's evaluation input
(segmentation: ``DATASET.CROP_SIZE`` squared, 480x480 as the authors' profiler; depth:
``DATASET.INPUT_HEIGHT`` x ``DATASET.INPUT_WIDTH``), batch 1:

    Params = 32-bit state-dict entries + 1-bit weights / 32          (strict count)
    OPs    = float MACs + binary MACs / 64

The authors' count (``params_paper``) of a binary model also divides the weight of its final full-precision
classifier by 32 (the quirk that reproduces Table 1); for a float model it equals the strict count.  Where
Table 1 (ADE20K, UPerNet-ConvNeXt-T) has a row for the method, its figures are printed beside ours; its binary
OPs fit a count near 448x448 and its FP32 OPs follow from no convention found (README, "Where this
implementation differs from the released code, and why", OPs resolution).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from binary.report import summary
from models import build_model

# arXiv 2411.10346, Table 1 (ADE20K validation, UPerNet-ConvNeXt-T): binary_type -> (row, Params K, OPs G).
TABLE1 = {
    "fp32": ("ConvNeXt*", 40_020, 288.36),
    "fp32_0": ("ConvNeXt", 40_023, 288.37),
    "bnn": ("BNN", 1_470, 4.84),
    "react": ("ReActNet", 1_531, 4.98),
    "adabin": ("AdaBin", 1_484, 5.24),
    "bisrnet": ("BiSRNet", 1_639, 5.07),
    "bidense": ("BiDense (Ours)", 1_626, 5.37),
}


def summarize(
    task: str,
    model_type: str,
    binary_type: str,
    input_hw: Sequence[int],
    print_table: bool = False,
    **model_kwargs: object,
) -> dict:
    """Build the model and count it at ``1 x 3 x H x W``.

    Returns:
        `binary.report.ModelSummary.to_dict()` without the per-layer rows, with ``task``, ``model_type`` and
        ``binary_type`` added.
    """
    model = build_model(task, model_type, binary_type, **model_kwargs)
    counted = summary(model, (1, 3, *input_hw), print_table=False)
    if print_table:
        print(counted)
    result = counted.to_dict()
    result.pop("rows")
    result.update(task=task, model_type=model_type, binary_type=binary_type)
    return result


def task_of_config(path: Path) -> str:
    """"depth" for a YAML under a ``depth`` folder or one setting ``MODEL.MAX_DEPTH``, else "segmentation"."""
    if "depth" in path.parts:
        return "depth"
    if "segmentation" in path.parts:
        return "segmentation"
    data = yaml.safe_load(path.read_text()) or {}
    return "depth" if "MAX_DEPTH" in (data.get("MODEL") or {}) else "segmentation"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.summary", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="segmentation or depth YAML (configs/{segmentation,depth}/)")
    parser.add_argument("--input", nargs=2, type=int, metavar=("H", "W"), help="input size (default: the config's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    from configs.loading import ConfigError, load_config

    if not args.config.is_file():
        parser.exit(2, f"error: config not found: {args.config}\n")
    task = task_of_config(args.config)
    try:
        cfg = load_config(task, args.config)
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    model_type, binary_type = cfg.MODEL.MODEL_TYPE, cfg.MODEL.BINARY_TYPE
    if args.input:
        input_hw = tuple(args.input)
    elif task == "segmentation":
        input_hw = (cfg.DATASET.CROP_SIZE, cfg.DATASET.CROP_SIZE)
    else:
        input_hw = (cfg.DATASET.INPUT_HEIGHT, cfg.DATASET.INPUT_WIDTH)
    if task == "segmentation":
        kwargs = {"num_classes": cfg.MODEL.NUM_CLASSES}
    else:
        kwargs = {"max_depth": cfg.MODEL.MAX_DEPTH}
    result = summarize(task, model_type, binary_type, input_hw, print_table=not args.json, **kwargs)
    result["config"] = str(args.config)
    paper = None
    if (task, model_type, cfg.DATASET.DATASET, input_hw) == ("segmentation", "upernet", "ade20k", (480, 480)):
        paper = TABLE1.get(binary_type)
    if paper is not None:
        result["table1"] = {"row": paper[0], "params_k": paper[1], "ops_g": paper[2]}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"\n{task} {model_type} {binary_type}, input 1x3x{input_hw[0]}x{input_hw[1]}:")
    print(f"  Params {result['params_k']:,.1f}K strict, {result['params_paper_k']:,.1f}K authors' count"
          + (f"; Table 1 ({paper[0]}): {paper[1]:,}K" if paper else ""))
    print(f"  OPs {result['ops_g']:,.3f} G" + (f"; Table 1: {paper[2]} G" if paper else ""))
    if paper:
        print("  (Table 1's binary OPs fit a count near 448x448; its FP32 OPs follow from no convention found,"
              " README: OPs resolution)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
