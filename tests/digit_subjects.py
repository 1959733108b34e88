"""A DreamBooth subject for the recipe tests on the embedded digits bases: bold threes from samples/digits.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def bold_threes(folder: Path, count: int = 6) -> Path:
    """`count` bold threes (32 px, dark ink on white) as PNGs in `folder`; returns `folder`."""
    sys.path.insert(0, str(SAMPLES))
    from digit_styles import STYLES
    from digits import paper_digits

    paper, labels = paper_digits(32)
    for i, im in enumerate(STYLES["bold"](paper[labels == 3][:count])):
        Image.fromarray(np.rint(im * 255).astype(np.uint8)).convert("RGB").save(folder / f"{i}.png")
    return folder
