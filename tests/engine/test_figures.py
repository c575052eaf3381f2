"""The README's figures (`engine.figures`): the predictions grid from an in-process checkpoint of each demo config
(no training), and the complexity chart from a hand-made count table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from configs import load_config
from engine import figures
from engine.predict import class_map, infer, resize_map
from train_depth import DepthModule
from train_segmentation import SegmentationModule, palette

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = str(REPO / "configs/segmentation/upernet_bidense_demo.yaml")
DEPTH_DEMO = str(REPO / "configs/depth/upernet_bidense_demo.yaml")


def make_checkpoint(module_cls, task: str, config: str, overrides: list[str], path: Path) -> Path:
    """A freshly initialised module of ``config`` saved in Lightning's checkpoint layout (what the loader reads)."""
    torch.manual_seed(0)
    module = module_cls.from_config(load_config(task, config, overrides), pretrained=False)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 5}, path)
    return path


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def test_segmentation_predictions_figure_shows_image_truth_and_prediction(tmp_path, data_path):
    overrides = ["DATASET.DATA_PATH", data_path]
    ckpt = make_checkpoint(SegmentationModule, "segmentation", SEG_DEMO, overrides, tmp_path / "seg.ckpt")
    out = tmp_path / "seg.png"
    assert figures.main(["predictions", SEG_DEMO, str(ckpt), str(out), "--n", "2", "--height", "64", *overrides]) == 0
    sheet = np.asarray(Image.open(out).convert("RGB"))

    cfg = load_config("segmentation", SEG_DEMO, overrides)
    pairs = figures.evaluation_pairs(cfg, "segmentation", 2)
    assert len(pairs) == 2
    image, mask = pairs[1]  # the last image of the evaluation set (60 of 128 x 128)
    assert image.shape == (128, 128, 3) and mask.shape == (128, 128)
    module = SegmentationModule.from_config(cfg, pretrained=False)
    module.load_state_dict(torch.load(ckpt)["state_dict"])
    module.eval()
    logits = infer(module, image, SegmentationModule.inference_size(cfg, 128, 128), 32, torch.device("cpu"))
    colours = palette("demo", cfg.MODEL.NUM_CLASSES)
    expected_truth = np.asarray(Image.fromarray(colours[mask]).resize((64, 64), Image.NEAREST))
    expected_guess = np.asarray(Image.fromarray(colours[class_map(logits, (128, 128)).numpy()]).resize(
        (64, 64), Image.NEAREST))

    # layout: 3 columns of 64 px and 2 rows of 64 px with 4 px gaps below a 42 px title and header band
    top, gap = 2 * figures.GAP + 38, figures.GAP
    assert sheet.shape == (top + 2 * (64 + gap), 4 * gap + 3 * 64, 3)
    y = top + 64 + gap
    np.testing.assert_array_equal(sheet[y:y + 64, 2 * gap + 64: 2 * gap + 128], expected_truth)
    np.testing.assert_array_equal(sheet[y:y + 64, 3 * gap + 128: 3 * gap + 192], expected_guess)
    gap_column = sheet[top:, gap + 64: 2 * gap + 64]
    assert (gap_column == 255).all()


def test_depth_predictions_share_one_colour_range(tmp_path, data_path):
    overrides = ["DATASET.DATA_PATH", data_path]
    ckpt = make_checkpoint(DepthModule, "depth", DEPTH_DEMO, overrides, tmp_path / "depth.ckpt")
    figure = figures.prediction_figure(DEPTH_DEMO, ckpt, overrides, n=1, height=128)
    picture = np.asarray(figure)
    top, gap = 2 * figures.GAP + 38, figures.GAP
    # demo depth images are 128 x 160: three pictures of 160 px
    assert picture.shape == (top + 128 + gap, 4 * gap + 3 * 160, 3)

    cfg = load_config("depth", DEPTH_DEMO, overrides)
    (image, depth), = figures.evaluation_pairs(cfg, "depth", 1)
    assert image.shape == (128, 160, 3) and depth.dtype == np.float32
    assert 1.0 < depth[depth > 0].min() and depth.max() < 9.5  # metres, as the demo's ground truth
    module = DepthModule.from_config(cfg, pretrained=False)
    module.load_state_dict(torch.load(ckpt)["state_dict"])
    module.eval()
    pred = resize_map(infer(module, image, (128, 160), 32, torch.device("cpu")), (128, 160))[0].numpy()
    truth = picture[top:top + 128, 2 * gap + 160: 2 * gap + 320].astype(int)
    guess = picture[top:top + 128, 3 * gap + 320: 3 * gap + 480].astype(int)
    # one range for both: the nearest depth of ground truth and prediction together is inferno's brightest colour
    inferno_top = np.array([252, 255, 164])
    gt = np.where(depth > 0, depth, np.inf)
    if gt.min() < pred.min():
        panel, near = truth, np.unravel_index(gt.argmin(), gt.shape)
    else:
        panel, near = guess, np.unravel_index(pred.argmin(), pred.shape)
    assert np.abs(panel[near] - inferno_top).max() <= 3
    # inverse depth is linear in the colour level: the far wall of the truth is darker than its nearest point
    far = np.unravel_index(np.where(depth > 0, depth, -1).argmax(), depth.shape)
    assert truth[far].sum() < truth[np.unravel_index(gt.argmin(), gt.shape)].sum()
    holes = depth == 0
    if holes.any():
        assert (truth[holes] <= 6).all()  # no ground truth: inverse depth 0, inferno's black


def test_evaluation_pairs_are_evenly_spaced_and_capped(data_path):
    cfg = load_config("segmentation", SEG_DEMO, ["DATASET.DATA_PATH", data_path])
    from datasets import build_datamodule

    dataset = build_datamodule(cfg, "segmentation").make_val()
    first, middle, last = figures.evaluation_pairs(cfg, "segmentation", 3)
    raw_first = np.asarray(Image.open(dataset.images[0]).convert("RGB"))
    raw_last = np.asarray(Image.open(dataset.images[59]).convert("RGB"))
    np.testing.assert_array_equal(first[0], raw_first)
    np.testing.assert_array_equal(last[0], raw_last)
    assert len(figures.evaluation_pairs(cfg, "segmentation", 500)) == 60


def count_row(model: str, method: str, params_k: float, ops_g: float) -> dict:
    return {"model_type": model, "binary_type": method, "params_k": params_k, "ops_g": ops_g,
            "input_shape": [1, 3, 480, 480]}


def test_complexity_bars_are_proportional_and_ordered(tmp_path):
    rows = [count_row("dpt", "bidense", 2_000.0, 7.0), count_row("upernet", "bidense", 1_600.0, 5.5),
            count_row("upernet", "fp32", 40_000.0, 70.0), count_row("upernet", "bnn", 1_500.0, 5.5)]
    counts = tmp_path / "counts.jsonl"
    counts.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = tmp_path / "complexity.png"
    assert figures.main(["complexity", str(out), "--counts", str(counts)]) == 0
    sheet = np.asarray(Image.open(out).convert("RGB"))

    def bar_lengths(colour: tuple[int, int, int]) -> list[list[int]]:
        """Per line of bars of ``colour`` (top to bottom): the length of each bar, left to right. Runs under 3 px
        are left out: anti-aliased text can hit the colour on single pixels."""
        hit = (sheet == np.array(colour)).all(axis=2)
        lines, seen = [], set()
        for y in range(hit.shape[0]):
            runs = np.flatnonzero(np.diff(np.concatenate([[0], hit[y].astype(int), [0]])))
            key = tuple((int(s), int(e)) for s, e in zip(runs[::2], runs[1::2], strict=True) if e - s >= 3)
            if key and key not in seen:
                seen.add(key)
                lines.append([e - s for s, e in key])
        return lines

    (fp32,) = bar_lengths(figures.BAR_COLOURS["float"])
    (bnn,) = bar_lengths(figures.BAR_COLOURS["binary"])
    upernet_bidense, dpt_bidense = bar_lengths(figures.BAR_COLOURS["bidense"])
    width = 260 + 1  # the largest value of each panel fills the bar width (both edges drawn)
    assert fp32 == [width, width]
    assert bnn == [round(260 * 1_500 / 40_000) + 1, round(260 * 5.5 / 70) + 1]
    assert upernet_bidense == [round(260 * 1_600 / 40_000) + 1, round(260 * 5.5 / 70) + 1]
    assert dpt_bidense == [round(260 * 2_000 / 40_000) + 1, round(260 * 7.0 / 70) + 1]


def test_a_bad_counts_file_is_one_line(tmp_path, capsys):
    counts = tmp_path / "counts.jsonl"
    counts.write_text(json.dumps({"model_type": "upernet"}) + "\n")
    with pytest.raises(SystemExit) as exit_:
        figures.main(["complexity", str(tmp_path / "c.png"), "--counts", str(counts)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{counts} line 1" in err and "binary_type" in err


def test_a_long_title_is_shrunk_to_fit_the_sheet():
    """The title band keeps a white right margin however long the title (the font shrinks until it fits)."""
    pictures = [[Image.new("RGB", (110, 40), (0, 128, 0)) for _ in range(3)]]  # the title needs 16 px fonts: 480 px
    title = "upernet bidense, demo evaluation set (best-epoch007.ckpt, epoch 7)"
    sheet = np.asarray(figures.compose_grid(pictures, ("a", "b", "c"), title))
    band = sheet[: figures.GAP + 18, :, :]
    dark = (band < 128).all(axis=2)
    assert dark.any() and not dark[:, -figures.GAP:].any()
