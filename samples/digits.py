"""scikit-learn's bundled handwritten digits (1,797 scans of 8x8 pixels, 16 grey levels) as image folders.

    write_digits(root, digits=range(5, 10)) -> (root/train, root/val), one subfolder per digit

The scans ship inside scikit-learn: nothing is downloaded. The split is stratified and seeded, and files
are rewritten only when missing, so the folders are the same on every machine and every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image


def write_digits(root: str | Path, digits: Iterable[int], val_fraction: float = 0.3,
                 seed: int = 0) -> tuple[Path, Path]:
    """Write the chosen digits as 8x8 greyscale PNGs into root/train/<digit>/ and root/val/<digit>/."""
    from sklearn.datasets import load_digits

    root = Path(root)
    bunch = load_digits()
    pixels = np.rint(bunch.images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255, [N, 8, 8]
    rng = np.random.default_rng(seed)
    for digit in digits:
        members = np.flatnonzero(bunch.target == digit)
        held = set(rng.permutation(members)[: int(round(len(members) * val_fraction))].tolist())
        for i in members:
            path = root / ("val" if i in held else "train") / str(digit) / f"{i:04d}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels[i], mode="L").save(path)
    return root / "train", root / "val"


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_caption(digit: int) -> str:
    """The caption the diffusion base was trained on: 'a handwritten digit three'."""
    return f"a handwritten digit {DIGIT_WORDS[digit]}"


def paper_digits(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scans as dark ink on white paper: (images [N, size, size] float32 in [0, 1], 1 = paper; labels [N]).

    The 8x8 scans (0..16, ink high) are scaled to ink in [0, 1], upsampled bicubically (clipped to [0, 1], so
    strokes come out smooth rather than blocky) and inverted: paper = 1 - ink.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ink = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8]
    big = F.interpolate(ink, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return (1.0 - big[:, 0]).numpy(), bunch.target.astype(np.int64)


def to_rgb_uint8(paper: np.ndarray) -> np.ndarray:
    """Grey paper images [N, H, W] in [0, 1] -> RGB uint8 [N, H, W, 3]."""
    grey = np.rint(np.clip(paper, 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
