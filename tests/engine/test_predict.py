"""Predict mode of the test scripts: image selection, sizes, dtypes and scales of the files, skipped files, errors.

The checkpoints are made in-process from the demo configs (a freshly initialised module saved in Lightning's
checkpoint layout), so no training runs here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from configs import load_config
from datasets.bts import DEPTH_SCALE
from engine.predict import class_map, default_output, infer, pad_to_unit, resize_map, select_images
from models.pack import main as pack_main
from train_depth import DepthModule, depth_to_png, png_scale
from train_segmentation import SegmentationModule, palette

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = str(REPO / "configs/segmentation/upernet_bidense_demo.yaml")
DEPTH_DEMO = str(REPO / "configs/depth/upernet_bidense_demo.yaml")
DPT_DEPTH_DEMO = str(REPO / "configs/depth/dpt_bidense_demo.yaml")


def make_checkpoint(module_cls, task: str, config: str, path: Path) -> Path:
    """A freshly initialised module of ``config`` saved as a Lightning checkpoint (what the loader reads)."""
    torch.manual_seed(0)
    module = module_cls.from_config(load_config(task, config), pretrained=False)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0}, path)
    return path


def save_image(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return image


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, tuple[int, int]]:
    """A folder with images of mixed sizes (no multiple of 32 or 14, one below 28), a text file, a corrupt and a
    truncated image; returns the folder and the (height, width) of each image stem."""
    folder = tmp_path_factory.mktemp("images")
    sizes = {"wide": (37, 50), "tall": (61, 23), "small": (20, 27)}
    save_image(folder / "wide.png", *sizes["wide"], seed=1)
    save_image(folder / "tall.JPG", *sizes["tall"], seed=2)
    save_image(folder / "small.bmp", *sizes["small"], seed=3)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    jpeg = (folder / "tall.JPG").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return {"folder": folder, "sizes": sizes}


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(SegmentationModule, "segmentation", SEG_DEMO,
                           tmp_path_factory.mktemp("seg") / "best-epoch000.ckpt")


def skipped_lines(err: list[str]) -> list[str]:
    return [line for line in err if line.startswith("skipped ")]


def test_segmentation_folder(images, seg_ckpt, run_main):
    """Every image gets its three PNGs at its own size; the three bad files are skipped with one line each."""
    ran = run_main("test_segmentation", SEG_DEMO, str(seg_ckpt), "--predict", str(images["folder"]))
    assert ran.code == 0, ran.err
    skipped = skipped_lines(ran.err)
    assert len(skipped) == 3, ran.err
    assert {Path(line.split()[1].rstrip(":")).name for line in skipped} == {"notes.txt", "corrupt.png",
                                                                            "truncated.jpg"}
    folder = default_output(seg_ckpt)
    assert folder == seg_ckpt.parent / "best-epoch000_predictions"
    assert "3 of 5 image(s) predicted" in ran.out
    colours = palette("demo", 7)
    for stem, (h, w) in images["sizes"].items():
        ids = cv2.imread(str(folder / f"{stem}_classes.png"), cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.uint8 and ids.shape == (h, w) and ids.max() < 7
        colour = cv2.imread(str(folder / f"{stem}_colour.png"))[..., ::-1]
        np.testing.assert_array_equal(colour, colours[ids])
        side = cv2.imread(str(folder / f"{stem}_side_by_side.png"))[..., ::-1]
        assert side.shape == (h, 3 * w, 3)
        np.testing.assert_array_equal(side[:, w:2 * w], colour)


def test_a_packed_file_predicts_what_its_checkpoint_predicts(images, tmp_path, run_main):
    """``--predict`` takes the packed 1-bit file of ``python -m models.pack`` wherever it takes a .ckpt: the same
    16-bit depth maps (millimetres) for every image."""
    ckpt = make_checkpoint(DepthModule, "depth", DEPTH_DEMO, tmp_path / "last.ckpt")
    packed = tmp_path / "model.packed"
    assert pack_main([str(ckpt), str(packed)]) == 0
    outputs = {}
    for name, weights in (("ckpt", ckpt), ("packed", packed)):
        ran = run_main("test_depth", DEPTH_DEMO, str(weights), "--predict", str(images["folder"]), "--out",
                       str(tmp_path / name))
        assert ran.code == 0, ran.err
        outputs[name] = {stem: cv2.imread(str(tmp_path / name / f"{stem}_depth.png"), cv2.IMREAD_UNCHANGED)
                         for stem in images["sizes"]}
    for stem in images["sizes"]:
        assert len(np.unique(outputs["ckpt"][stem])) > 10
        np.testing.assert_array_equal(outputs["packed"][stem], outputs["ckpt"][stem])


def test_segmentation_matches_the_model_on_a_padded_input(images, seg_ckpt, tmp_path, run_main):
    """The class ids are the argmax of the model's logits at the validation scale (short side CROP_SIZE = 32),
    padded to a multiple of 32, cropped and resized back bilinearly: computed here without engine.predict."""
    ran = run_main("test_segmentation", SEG_DEMO, str(seg_ckpt), "--predict",
                   str(images["folder"] / "wide.png"), "--out", str(tmp_path))
    assert ran.code == 0, ran.err
    module = SegmentationModule.from_config(load_config("segmentation", SEG_DEMO), pretrained=False)
    module.load_state_dict(torch.load(seg_ckpt, weights_only=True)["state_dict"])
    module.eval()
    image = np.asarray(Image.open(images["folder"] / "wide.png").convert("RGB"))
    h, w = 32, int(50 * 32 / 37)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR)).astype(np.float32) / 255
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    x = torch.from_numpy((resized - mean) / std).permute(2, 0, 1)
    x = torch.cat([x, x[:, :, -1:].expand(3, h, 64 - w)], dim=2)
    with torch.no_grad():
        logits = module(x[None])[:, :, :h, :w]
    expected = F.interpolate(logits, size=(37, 50), mode="bilinear", align_corners=False)[0].argmax(0)
    ids = cv2.imread(str(tmp_path / "wide_classes.png"), cv2.IMREAD_UNCHANGED)
    assert (torch.from_numpy(ids.astype(np.int64)) == expected).float().mean() > 0.99


@pytest.mark.parametrize(("config", "unit"), [(DEPTH_DEMO, 32), (DPT_DEPTH_DEMO, 28)])
def test_depth_folder_decodes_to_the_predicted_metres(config, unit, images, tmp_path, run_main):
    """16-bit PNG / 1000 (the demo is stored in NYU's scale) equals the predicted metres within half a step."""
    ckpt = make_checkpoint(DepthModule, "depth", config, tmp_path / "last.ckpt")
    out = tmp_path / "pred"
    ran = run_main("test_depth", config, str(ckpt), "--predict", str(images["folder"]), "--out", str(out))
    assert ran.code == 0, ran.err
    assert len(skipped_lines(ran.err)) == 3
    module = DepthModule.from_config(load_config("depth", config), pretrained=False)
    module.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    module.eval()
    for stem, (h, w) in images["sizes"].items():
        raw = cv2.imread(str(out / f"{stem}_depth.png"), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape == (h, w) and 1 <= raw.min() and raw.max() <= 10_000
        colour = cv2.imread(str(out / f"{stem}_depth_colour.png"))
        assert colour.shape == (h, w, 3)
    image = np.asarray(Image.open(images["folder"] / "small.bmp").convert("RGB"))
    predicted = resize_map(infer(module, image, image.shape[:2], unit, torch.device("cpu")), image.shape[:2])[0]
    raw = cv2.imread(str(out / "small_depth.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(raw / 1000.0, predicted.numpy(), atol=0.5 / 1000 + 1e-6)


def test_depth_png_scales():
    """NYU and the demo store metres x 1000, KITTI x 256; values round to the nearest step, never to 0."""
    assert png_scale("nyu") == png_scale("demo") == DEPTH_SCALE["nyu"] == 1000.0
    assert png_scale("kitti") == DEPTH_SCALE["kitti"] == 256.0
    depth = np.array([[0.0001, 1.2344, 79.99, 300.0]])
    np.testing.assert_array_equal(depth_to_png(depth, 1000.0), [[1, 1234, 65535, 65535]])
    np.testing.assert_array_equal(depth_to_png(depth, 256.0), [[1, 316, 20477, 65535]])


def test_class_map_chunks_equal_a_full_argmax():
    logits = torch.randn(37, 9, 13)
    logits[5, 2, 3] = logits[21, 2, 3] = 50.0  # a tie across chunks goes to the lower class
    full = F.interpolate(logits[None], size=(20, 31), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(class_map(logits, (20, 31), chunk=16), full)
    assert torch.equal(class_map(logits, (9, 13), chunk=16), logits.argmax(0))


def test_pad_to_unit_repeats_the_edges():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).view(1, 2, 3, 5)
    y = pad_to_unit(x, 4)
    assert y.shape == (1, 2, 4, 8)
    assert torch.equal(y[..., :3, :5], x)
    assert torch.equal(y[..., 3, :5], x[..., 2, :]) and torch.equal(y[..., :3, 7], x[..., :, 4])
    assert pad_to_unit(torch.zeros(1, 3, 64, 32), 32).shape == (1, 3, 64, 32)


def test_segmentation_inference_size_is_the_validation_scale():
    cfg = load_config("segmentation", SEG_DEMO, ["DATASET.CROP_SIZE", "480"])
    assert SegmentationModule.inference_size(cfg, 512, 683) == (480, int(683 * 480 / 512))
    assert SegmentationModule.inference_size(cfg, 700, 300) == (1120, 480)
    assert DepthModule.inference_size(load_config("depth", DEPTH_DEMO), 77, 91) == (77, 91)


def test_selection(tmp_path):
    (tmp_path / "b.jpeg").write_bytes(b"")
    (tmp_path / "a.PNG").write_bytes(b"")
    (tmp_path / "c.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    images, others = select_images(tmp_path)
    assert [p.name for p in images] == ["a.PNG", "b.jpeg"] and [p.name for p in others] == ["c.txt"]
    assert select_images(tmp_path / "c.txt") == ([tmp_path / "c.txt"], [])


@pytest.mark.parametrize("what", ["empty folder", "no images", "missing", "unreadable file"])
def test_nothing_to_predict_is_one_line_and_exit_1(what, seg_ckpt, tmp_path, run_main):
    source = tmp_path / "in"
    if what != "missing":
        source.mkdir()
    if what == "no images":
        (source / "readme.md").write_text("x")
    if what == "unreadable file":
        source = source / "x.png"
        source.write_bytes(b"garbage")
    ran = run_main("test_segmentation", SEG_DEMO, str(seg_ckpt), "--predict", str(source), "--out",
                   str(tmp_path / "out"))
    assert ran.code == 1
    errors = [line for line in ran.err if not line.startswith(("skipped ", "predict:"))]
    assert len(errors) == 1 and not any("Traceback" in line for line in ran.err)
    assert errors[0].startswith("test_segmentation.py: error: --predict ")
    assert {"empty folder": "holds no image file", "no images": "1 other file(s)", "missing": "no such file",
            "unreadable file": "could be decoded"}[what] in errors[0]


def test_out_without_predict_is_refused(seg_ckpt, run_main):
    ran = run_main("test_segmentation", SEG_DEMO, str(seg_ckpt), "--out", "x")
    assert ran.code == 1 and any("--out DIR goes with --predict" in line for line in ran.err)
