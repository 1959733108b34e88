"""Decoding rules: every awkward image becomes the right 8-bit RGB picture, every bad one a named refusal."""

import numpy as np
import pytest
from images_corpus import bomb_png, pattern, png_bytes, rgb16_png, with_exif_orientation, write_corpus
from PIL import Image

from vislora.images import ImageDecodeError, decode_image


def _decoded(path) -> np.ndarray:
    im = decode_image(path)
    assert im.mode == "RGB"
    return np.asarray(im)


def test_corpus_decodes_or_refuses_by_name(tmp_path):
    names, skipped = write_corpus(tmp_path)
    for name in names:
        if name in skipped:
            with pytest.raises(ImageDecodeError) as e:
                decode_image(tmp_path / name)
            assert name in str(e.value) and e.value.path.endswith(name)
        else:
            assert _decoded(tmp_path / name).ndim == 3, name


def test_plain_modes_keep_their_pixels(tmp_path):
    a = pattern()
    for name, im, expected in [
        ("rgb.png", Image.fromarray(a), a),
        ("grey.png", Image.fromarray(a[..., 0], mode="L"), np.repeat(a[..., :1], 3, axis=2)),
        ("one.png", Image.fromarray(a[:1, :1]), a[:1, :1]),
    ]:
        (tmp_path / name).write_bytes(png_bytes(im))
        assert np.array_equal(_decoded(tmp_path / name), expected), name


@pytest.mark.parametrize("orientation, turn", [
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),   # shot rotated: turn 90 degrees clockwise to view
    (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
])
def test_exif_orientation_is_applied_exactly(tmp_path, orientation, turn):
    a = pattern()
    path = tmp_path / f"o{orientation}.png"
    path.write_bytes(with_exif_orientation(a, orientation))
    assert np.array_equal(_decoded(path), turn(a))


def test_sixteen_bit_grey_maps_linearly_not_clamped(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 4).astype(np.uint16).reshape(4, 256)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    got = _decoded(path)[..., 0].astype(float)
    expected = ramp / 257.0
    assert abs(got.mean() - expected.mean()) <= 1.0
    assert np.abs(got - expected).max() <= 0.5 + 1e-9  # rounding only
    assert got.min() == 0 and got.max() == 255


def test_sixteen_bit_rgb(tmp_path):
    a = pattern()
    path = tmp_path / "rgb48.png"
    path.write_bytes(rgb16_png(a.astype(np.uint16) * 257))
    assert np.abs(_decoded(path).astype(int) - a).max() <= 1


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)    # opaque red stays red
    rgba[0, 1] = (0, 0, 255, 0)      # fully transparent: the background
    rgba[1, 0] = (255, 0, 0, 128)    # half red over white
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    got = _decoded(path).astype(int)
    assert got[0, 0].tolist() == [255, 0, 0]
    assert got[0, 1].tolist() == [255, 255, 255]
    assert np.abs(got[1, 0] - [255, 127, 127]).max() <= 1
    assert np.array_equal(_decoded(path), _decoded(path))  # deterministic


def test_palette_transparency_is_composited(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    im.save(path, transparency=0)
    assert _decoded(path).tolist() == [[[255, 255, 255], [10, 20, 30]]]


def test_pixel_cap_refuses_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(Image.new("RGB", (100, 100))))
    assert decode_image(path, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(path, max_pixels=9_999)
    assert e.value.reason == "too-large"


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_decompression_bombs_are_refused(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(side))  # a few KB claiming side^2 pixels
    assert path.stat().st_size < 50_000
    with pytest.raises(ImageDecodeError) as e:
        decode_image(path)
    assert e.value.reason == "too-large" and "bomb.png" in str(e.value)
