"""Decode one image file into an 8-bit RGB picture, the same way every time, or say why not.

    decode_image(path) -> PIL.Image in mode "RGB", or raises ImageDecodeError naming the file

What "the same way" means:
- the file is decoded in full (`load()`), so a truncated file fails here, not in the middle of an epoch;
- EXIF orientation is applied, so a phone photo comes out the way it was shot;
- 16-bit grey (`I;16`, `I`) maps linearly 0..65535 -> 0..255 (Pillow's own conversion clamps: near-white);
- transparency (RGBA, LA, PA, P with a transparent colour) is composited on a fixed background colour;
- every other mode (L, 1, P, CMYK, YCbCr, LAB, HSV, F) goes through Pillow's conversion to RGB;
- a picture of more than `max_pixels` pixels is refused from its header, before any pixel is decoded,
  and Pillow's decompression-bomb warning counts as a refusal too.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from .errors import VisloraError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

# Pillow's own warning threshold (about 89 MP): 0.27 GB of RGB pixels is already far beyond a training image.
MAX_PIXELS = 89_478_485
# White: what a transparent web image is usually seen against.
BACKGROUND = (255, 255, 255)


class DatasetError(VisloraError):
    """The data cannot be used as given; the message names the path and what to change."""


class SkippedImageWarning(UserWarning):
    """An image was left out of the data set (unreadable, not an image, too large, outside the root)."""


class ImageDecodeError(VisloraError):
    """An image file cannot be used: unreadable, truncated, not an image, or too large.

    `reason` is a short tag: "unreadable", "too-large".
    """

    def __init__(self, path: object, message: str, reason: str = "unreadable") -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {message}")


def _sixteen_bit(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    # Linear 0..65535 -> 0..255 (x / 257 maps 65535 to 255 exactly), not Pillow's clamp to 255.
    values = np.asarray(im, dtype=np.float64)
    grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = im.convert("RGBA")
    ground = Image.new("RGBA", rgba.size, background + (255,))
    return Image.alpha_composite(ground, rgba).convert("RGB")


def _palette(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    return _composite(im, background) if "transparency" in im.info else im.convert("RGB")


def _plain(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    return im if im.mode == "RGB" else im.convert("RGB")


# Mode -> conversion to RGB. Modes not listed use Pillow's conversion (`_plain`).
_TO_RGB: dict[str, Callable[[Image.Image, tuple[int, int, int]], Image.Image]] = {
    "I;16": _sixteen_bit, "I;16L": _sixteen_bit, "I;16B": _sixteen_bit, "I;16N": _sixteen_bit, "I": _sixteen_bit,
    "RGBA": _composite, "RGBa": _composite, "LA": _composite, "La": _composite, "PA": _composite,
    "P": _palette,
}


def decode_image(
    path: str | os.PathLike,
    *,
    max_pixels: int = MAX_PIXELS,
    background: tuple[int, int, int] = BACKGROUND,
) -> Image.Image:
    """Fully decode `path` to an RGB image (rules in the module docstring); ImageDecodeError if it cannot."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; a warning here is a refusal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageDecodeError(path, f"{width}x{height} pixels is over the limit of {max_pixels:,} "
                                                 "(a decompression bomb?)", "too-large")
                im.load()
                im = ImageOps.exif_transpose(im) or im
                rgb = _TO_RGB.get(im.mode, _plain)(im, background)
                rgb.load()
                return rgb
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(path, f"refused as a decompression bomb: {e}", "too-large") from None
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many types on bad input; each file is data
        raise ImageDecodeError(path, f"cannot decode ({type(e).__name__}: {e})") from None


def warn_skipped(skipped: list[tuple[str, str]], source: object) -> None:
    """One warning per left-out file, naming it, then one with the count."""
    for path, reason in skipped:
        warnings.warn(f"skipped {path}: {reason}", SkippedImageWarning, stacklevel=3)
    if skipped:
        warnings.warn(f"{source}: {len(skipped)} files skipped", SkippedImageWarning, stacklevel=3)
