"""Handwriting styles for the digits: transforms that make style datasets, and measures that read style back.

Transforms take grey paper images [N, H, W] float in [0, 1] (1 = white paper, 0 = ink; as digits.paper_digits
returns them) and return the same kind; they work on ink = 1 - paper, so the paper stays white:

    bold(images, size=3)       thicker strokes: grey dilation of the ink (max filter over a size x size disk)
    thin(images, size=2)       thinner strokes: grey erosion of the ink
    italic(images, angle=15)   shear x' = x + tan(angle) * (cy - y): the top leans right by `angle` degrees
    mirror(images)             left-right flip
    rot90(images)              a quarter turn counter-clockwise (the top goes to the left)
    upside_down(images)        rotation by 180 degrees (its own inverse, so a scorer can undo it)
    STYLES                     name -> transform, including "plain" (identity)
    INVERSES                   name -> the transform that undoes it, for the geometric styles (a scorer reads
                               a drawing in such a style after undoing it)

Measures take images in any of these forms: [N, H, W] grey or [N, H, W, 3] RGB, uint8 (0..255) or float
(0..1), or a list of PIL images; all assume dark ink on light paper:

    stroke_width(images) -> [N] float, pixels: 2 * ink area / ink perimeter, where the perimeter is the total
        variation sum |grad ink| (a soft, sub-pixel length of the outline). A stroke of width w and length L
        has area w L and outline 2 L, so the ratio is w (a little under it, for the two stroke ends).
    slant(images) -> [N] float, degrees: -atan(mu11 / mu02) from the ink's central moments (y down), so a
        letter leaning right is positive. A shear by k changes mu11 / mu02 by exactly -k, so italic(angle)
        raises slant by about `angle` on any image.

write_style_folder(root, style, ...) writes a captioned image folder (PNG + .txt sidecar + metadata.jsonl).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage

from digits import DIGIT_WORDS, paper_digits, to_rgb_uint8


def as_ink(images) -> np.ndarray:
    """Any image batch (see module doc) -> ink [N, H, W] float32 in [0, 1], 1 = full ink."""
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im.convert("L") if hasattr(im, "convert") else im) for im in images])
    arr = np.asarray(images)
    if arr.ndim == 4:  # RGB(A): ITU-R 601 luma, as PIL's convert("L")
        arr = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114 if arr.shape[-1] >= 3 else arr[..., 0]
    arr = arr.astype(np.float32)
    if np.asarray(images).dtype == np.uint8:
        arr = arr / 255.0
    return 1.0 - np.clip(arr, 0.0, 1.0)


def stroke_width(images) -> np.ndarray:
    """Mean stroke thickness in pixels per image: 2 * sum(ink) / sum(|grad ink|) (see the module doc)."""
    ink = as_ink(images)
    gy, gx = np.gradient(ink, axis=(1, 2))
    outline = np.sqrt(gx**2 + gy**2).sum(axis=(1, 2))
    return 2.0 * ink.sum(axis=(1, 2)) / np.maximum(outline, 1e-6)


def slant(images) -> np.ndarray:
    """Lean of each image in degrees from ink moments: -atan(mu11 / mu02), y down; right lean is positive."""
    ink = as_ink(images).astype(np.float64)
    h, w = ink.shape[1:]
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    mass = np.maximum(ink.sum(axis=(1, 2)), 1e-9)
    cx = (ink * x).sum(axis=(1, 2)) / mass
    cy = (ink * y).sum(axis=(1, 2)) / mass
    dx, dy = x[None] - cx[:, None, None], y[None] - cy[:, None, None]
    mu11, mu02 = (ink * dx * dy).sum(axis=(1, 2)), (ink * dy * dy).sum(axis=(1, 2))
    return np.degrees(np.arctan(-mu11 / np.maximum(mu02, 1e-9)))


def _disk(size: int) -> np.ndarray:
    r = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size]
    return (x - r) ** 2 + (y - r) ** 2 <= r * r + 0.5


def bold(images: np.ndarray, size: int = 3) -> np.ndarray:
    """Thicker strokes: ink dilated by a size x size disk (grey max filter); adds about size - 1 pixels of width."""
    ink = 1.0 - np.asarray(images, dtype=np.float32)
    return 1.0 - ndimage.grey_dilation(ink, footprint=_disk(size)[None])


def thin(images: np.ndarray, size: int = 2) -> np.ndarray:
    """Thinner strokes: ink eroded by a size x size disk (grey min filter)."""
    ink = 1.0 - np.asarray(images, dtype=np.float32)
    return 1.0 - ndimage.grey_erosion(ink, footprint=_disk(size)[None])


def italic(images: np.ndarray, angle: float = 15.0) -> np.ndarray:
    """Shear about the image centre: x' = x + tan(angle) * (cy - y), so the top leans right by `angle` degrees."""
    ink = 1.0 - np.asarray(images, dtype=np.float32)
    k = float(np.tan(np.radians(angle)))
    h, w = ink.shape[1:]
    cy = (h - 1) / 2
    # affine_transform maps output coords to input coords: x_in = x_out - k * (cy - y_out).
    matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, k, 1.0]])  # rows: (n, y, x) in; columns: (n, y, x) out
    offset = np.array([0.0, 0.0, -k * cy])
    out = ndimage.affine_transform(ink, matrix, offset=offset, order=1, mode="constant", cval=0.0)
    return 1.0 - np.clip(out, 0.0, 1.0)


def mirror(images: np.ndarray) -> np.ndarray:
    """Left-right flip."""
    return np.ascontiguousarray(np.asarray(images)[:, :, ::-1])


def rot90(images: np.ndarray) -> np.ndarray:
    """A quarter turn counter-clockwise: the top of the digit goes to the left."""
    return np.ascontiguousarray(np.rot90(np.asarray(images), k=1, axes=(1, 2)))


def rot270(images: np.ndarray) -> np.ndarray:
    """A quarter turn clockwise (undoes rot90)."""
    return np.ascontiguousarray(np.rot90(np.asarray(images), k=-1, axes=(1, 2)))


def upside_down(images: np.ndarray) -> np.ndarray:
    """Rotation by 180 degrees; applied twice it is the identity, so `upside_down(drawn)` undoes the style."""
    return np.ascontiguousarray(np.asarray(images)[:, ::-1, ::-1])


def plain(images: np.ndarray) -> np.ndarray:
    """Identity (the base style)."""
    return np.asarray(images)


STYLES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "plain": plain, "bold": bold, "thin": thin, "italic": italic, "mirror": mirror, "rot90": rot90,
    "upside_down": upside_down,
}
# Geometric styles lose no information: each has an exact inverse.
INVERSES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mirror": mirror, "rot90": rot270,
                                                            "upside_down": upside_down}


def style_caption(digit: int, style: str, template: str = "a handwritten digit {word} in {style} style") -> str:
    """Caption of a styled digit; the template may use {word}, {digit} and {style}."""
    return template.format(word=DIGIT_WORDS[digit], digit=digit, style=style)


def write_style_folder(root: str | Path, style: str | Sequence[str], digits: Iterable[int] = range(10),
                      per_digit: int = 8, template: str = "a handwritten digit {word} in {style} style",
                      size: int = 32, seed: int = 0) -> Path:
    """Write `per_digit` seeded real scans of each digit, transformed by `style`, as a captioned folder.

    `style` is a STYLES name or a list of names applied in order (e.g. ["bold", "italic"], captioned
    "bold italic"). Files: root/NNNN.png (RGB, size x size, dark ink on white), root/NNNN.txt (the caption),
    and root/metadata.jsonl ({"file_name", "text"} per line, the Hugging Face imagefolder layout).
    Returns root.
    """
    names = [style] if isinstance(style, str) else list(style)
    unknown = [n for n in names if n not in STYLES]
    if unknown:
        raise ValueError(f"unknown style {unknown}; choose from {sorted(STYLES)}")
    paper, labels = paper_digits(size)
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for digit in digits:
        chosen = rng.permutation(np.flatnonzero(labels == digit))[:per_digit]
        images = paper[chosen]
        for name in names:
            images = STYLES[name](images)
        for index, rgb in zip(chosen, to_rgb_uint8(images)):
            from PIL import Image

            stem = f"{int(index):04d}"
            text = style_caption(int(digit), " ".join(names), template)
            Image.fromarray(rgb, mode="RGB").save(root / f"{stem}.png")
            (root / f"{stem}.txt").write_text(text + "\n")
            rows.append({"file_name": f"{stem}.png", "text": text})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
