"""`read_rgb` on every image mode PIL writes to disk: the RGB each must become, computed independently."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datasets.io import DataError, read_rgb

RNG = np.random.default_rng(0)
GREY16 = np.array([[0, 1, 128, 129, 257], [32767, 32768, 65278, 65534, 65535]], np.uint16)
RGB = RNG.integers(0, 256, (2, 5, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (2, 5), dtype=np.uint8)


def grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2).astype(np.uint8)


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """R = 255 (1 - C)(1 - K), likewise G with M and B with Y (all channels in [0, 1])."""
    c, m, y, k = (cmyk[..., i] / 255.0 for i in range(4))
    return np.round(255 * np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], axis=-1))


def palette_image() -> tuple[Image.Image, np.ndarray]:
    index = RNG.integers(0, 4, (2, 5), dtype=np.uint8)
    colours = np.array([[255, 0, 0], [0, 128, 0], [10, 20, 30], [200, 200, 7]], np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette(colours.flatten().tolist())
    return im, colours[index]


def cases() -> list[tuple[str, Image.Image, np.ndarray]]:
    cmyk = RNG.integers(0, 256, (2, 5, 4), dtype=np.uint8)
    p_image, p_rgb = palette_image()
    return [
        # 16-bit grey: v / 257 rounded (65535 -> 255, 128 -> 0, 129 -> 1), not clipped to 255
        ("I;16 png", Image.fromarray(GREY16), np.round(GREY16 / 257.0)[..., None].repeat(3, axis=2)),
        ("I tiff", Image.fromarray(GREY16.astype(np.int32), mode="I"), grey(np.round(GREY16 / 257.0))),
        ("L png", Image.fromarray(RGB[..., 0], mode="L"), grey(RGB[..., 0])),
        ("LA png", Image.fromarray(np.stack([RGB[..., 0], ALPHA], -1), mode="LA"), grey(RGB[..., 0])),
        ("P png", p_image, p_rgb),
        ("RGBA png", Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], -1), mode="RGBA"), RGB),
        ("CMYK tiff", Image.fromarray(cmyk, mode="CMYK"), cmyk_to_rgb(cmyk)),
        ("1 png", Image.fromarray(RGB[..., 0] > 127), grey(np.where(RGB[..., 0] > 127, 255, 0))),
        ("RGB png", Image.fromarray(RGB), RGB),
    ]


@pytest.mark.parametrize("index", range(len(cases())), ids=[c[0] for c in cases()])
def test_every_mode_becomes_the_right_rgb(index, tmp_path):
    name, image, expected = cases()[index]
    path = tmp_path / ("x.tiff" if "tiff" in name else "x.png")
    image.save(path)
    assert Image.open(path).mode == name.split()[0]  # the file really holds that mode
    got = read_rgb(str(path))
    assert got.dtype == np.uint8 and got.shape == (2, 5, 3)
    np.testing.assert_array_equal(got, expected.astype(np.uint8))


def test_16_bit_grey_keeps_its_contrast(tmp_path):
    """A 16-bit ramp read as RGB spans 0..255 (PIL's plain RGB conversion makes it nearly all white)."""
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    got = read_rgb(str(tmp_path / "ramp.png"))[..., 0]
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) == 64


def test_unsupported_modes_are_one_line_errors(tmp_path):
    Image.fromarray(np.ones((2, 2), np.float32), mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(DataError, match=r"f.tiff has PIL mode F, which has no defined conversion to RGB"):
        read_rgb(str(tmp_path / "f.tiff"))
    Image.fromarray(np.array([[-1, 70000]], np.int32), mode="I").save(tmp_path / "i.tiff")
    with pytest.raises(DataError, match=r"i.tiff \(PIL mode I\) holds values outside 0..65535 \(-1..70000\)"):
        read_rgb(str(tmp_path / "i.tiff"))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode image .*junk.png"):
        read_rgb(str(tmp_path / "junk.png"))
