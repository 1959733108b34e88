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
