"""Bad and awkward image files, generated on the spot (nothing here is downloaded or checked in)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    """An asymmetric RGB picture [h, w, 3] uint8: every flip and rotation of it is different."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    a[0, 0] = (255, 0, 0)
    return a


def png_bytes(im: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", **kw)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, depth: int, color: int, rows: bytes) -> bytes:
    """A PNG written by hand: for 16-bit RGB (Pillow cannot write it) and huge claimed sizes."""
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


def rgb16_png(values: np.ndarray) -> bytes:
    """values [h, w, 3] uint16 -> a 16-bit-per-channel RGB PNG."""
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    return raw_png(values.shape[1], values.shape[0], 16, 2, rows)


def bomb_png(side: int) -> bytes:
    """A few hundred bytes claiming side x side grey pixels (only the first row is present)."""
    return raw_png(side, side, 8, 0, b"\x00" + bytes(side))


def with_exif_orientation(a: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return png_bytes(im, exif=exif.tobytes())


def write_corpus(folder: Path) -> tuple[list[str], list[str]]:
    """Write the corpus into `folder`; returns (every file name, the names that must be skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    a = pattern()
    good_png = png_bytes(Image.fromarray(a))
    jpg = io.BytesIO()
    Image.fromarray(a).save(jpg, format="JPEG", quality=95)
    cmyk = io.BytesIO()
    Image.fromarray(a).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    palette = Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    gif = io.BytesIO()
    frames = [Image.fromarray(a).convert("P"), Image.fromarray(255 - a).convert("P")]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)

    files: dict[str, bytes] = {
        "good.png": good_png,
        "photo.jpg": jpg.getvalue(),
        "cmyk.jpg": cmyk.getvalue(),
        "grey.png": png_bytes(Image.fromarray(a[..., 0], mode="L")),
        "grey_alpha.png": png_bytes(Image.fromarray(np.dstack([a[..., 0], a[..., 1]]), mode="LA")),
        "rgba.png": png_bytes(Image.fromarray(np.dstack([a, a[..., :1]]), mode="RGBA")),
        "palette.png": png_bytes(palette),
        "palette_transparent.png": png_bytes(palette, transparency=0),
        "sixteen.png": png_bytes(Image.fromarray((a[..., 0].astype(np.uint16) * 257))),
        "rgb48.png": rgb16_png(a.astype(np.uint16) * 257),
        "rotated6.png": with_exif_orientation(a, 6),
        "one_pixel.png": png_bytes(Image.fromarray(a[:1, :1])),
        "animated.gif": gif.getvalue(),
        "png_with_odd_suffix.xyz": good_png,
        "truncated.png": good_png[: len(good_png) // 2],
        "truncated.jpg": jpg.getvalue()[: len(jpg.getvalue()) // 2],
        "empty.jpg": b"",
        "page.jpg": b"<!DOCTYPE html><html><body>404 not found</body></html>",
        "notes.txt": b"not an image\n",
        "bomb.png": bomb_png(10_000),
        "bigger_bomb.png": bomb_png(20_000),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    skipped = ["truncated.png", "truncated.jpg", "empty.jpg", "page.jpg", "notes.txt", "bomb.png",
               "bigger_bomb.png"]
    return list(files), skipped
