"""Coloured shapes drawn procedurally, as image folders: a second kind of picture beside the digit scans.

    write_shapes(root, train_per_class=30, val_per_class=100) -> (root/train, root/val), one subfolder per shape

Five classes (circle, square, triangle, cross, ring), each 32x32 RGB: a random size, place and rotation, a
random colour on another random colour, with pixel noise. Drawn from a seeded generator, and files are written
only when missing, so the folders are the same on every machine and every run; nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring")
SIZE = 32


def _polygon(cx: float, cy: float, r: float, corners: int, turn: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(turn + 2 * math.pi * k / corners), cy + r * math.sin(turn + 2 * math.pi * k / corners))
            for k in range(corners)]


def draw_shape(shape: str, rng: np.random.Generator) -> Image.Image:
    """One picture of `shape`: radius 6-13 px, centre anywhere the shape fits, any rotation, colours at least
    60 apart (sum over RGB) so the shape is visible, then Gaussian noise of sd 12."""
    while True:
        ink, paper = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.abs(ink - paper).sum() >= 60:
            break
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in paper))
    draw = ImageDraw.Draw(image)
    r = float(rng.uniform(6, 13))
    cx, cy = (float(rng.uniform(r + 1, SIZE - r - 1)) for _ in range(2))
    turn = float(rng.uniform(0, 2 * math.pi))
    fill = tuple(int(v) for v in ink)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, int(r / 3)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r, 4, turn), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, turn), fill=fill)
    else:  # cross: two bars through the centre
        for angle in (turn, turn + math.pi / 2):
            dx, dy = r * math.cos(angle), r * math.sin(angle)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=fill, width=max(2, int(r / 3)))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 12, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def write_shapes(root: str | Path, train_per_class: int = 30, val_per_class: int = 100,
                 seed: int = 0) -> tuple[Path, Path]:
    """Write root/train/<shape>/NNNN.png and root/val/<shape>/NNNN.png (each split its own seeded stream)."""
    root = Path(root)
    for split, count, stream in (("train", train_per_class, 0), ("val", val_per_class, 1)):
        for k, shape in enumerate(SHAPES):
            rng = np.random.default_rng([seed, stream, k])
            for i in range(count):
                picture = draw_shape(shape, rng)  # drawn even when the file exists: the stream stays the same
                path = root / split / shape / f"{i:04d}.png"
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    picture.save(path)
    return root / "train", root / "val"
