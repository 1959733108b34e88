"""Score images of digits: a scikit-learn classifier on 8x8 scans that reads generated 32x32 drawings.

    classify(images) -> [N] int             the digit each image shows
    accuracy(images, digit) -> float        fraction of images classified as `digit`
    reference_accuracy() -> (per_digit [10], mean)   the scorer on held-out real scans, drawn at 32x32
    to_8x8(images) -> [N, 64] float         grey, inverted, area-downsampled, scaled to 0..16 (the scans' scale)

Images: [N, H, W] grey or [N, H, W, 3] RGB, uint8 or float in [0, 1], or a list of PIL images, dark ink on
light paper (H and W multiples of 8). The classifier is an RBF support-vector machine (C=10, gamma=0.001 on the
0..16 features), fitted on a seeded, stratified 70% of the scans after the same round trip a generated image
takes (8x8 -> paper_digits' 32x32 drawing -> to_8x8), so it judges shapes, not resampling blur. Fitting takes
about a second and is cached per process; it is deterministic.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from digit_styles import as_ink
from digits import paper_digits

HELD_OUT = 0.3


def to_8x8(images) -> np.ndarray:
    """Images -> [N, 64] ink features on the scans' 0..16 scale (mean of each (H/8) x (W/8) block)."""
    ink = as_ink(images)
    n, h, w = ink.shape
    if h % 8 or w % 8:
        raise ValueError(f"images are {h}x{w}; the scorer needs sides that are multiples of 8")
    blocks = ink.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))
    return (blocks * 16.0).reshape(n, 64)


@lru_cache(maxsize=4)
def split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out) into load_digits(), stratified by digit, seeded."""
    from sklearn.model_selection import train_test_split

    labels = paper_digits(8)[1]
    return tuple(train_test_split(np.arange(len(labels)), test_size=HELD_OUT, random_state=seed, stratify=labels))


@lru_cache(maxsize=4)
def scorer(seed: int = 0):
    """The fitted classifier (sklearn SVC) on round-tripped training scans; cached."""
    from sklearn.svm import SVC

    paper, labels = paper_digits(32)
    train, _ = split(seed)
    return SVC(C=10.0, gamma=0.001).fit(to_8x8(paper[train]), labels[train])


def classify(images, seed: int = 0) -> np.ndarray:
    """The digit (0..9) each image shows, [N] int."""
    return scorer(seed).predict(to_8x8(images)).astype(np.int64)


def accuracy(images, digit: int, seed: int = 0) -> float:
    """Fraction of images the scorer reads as `digit`."""
    return float((classify(images, seed) == digit).mean())


def reference_accuracy(seed: int = 0) -> tuple[np.ndarray, float]:
    """Accuracy per digit [10] and the mean over digits on the held-out real scans, drawn as 32x32 paper images."""
    paper, labels = paper_digits(32)
    _, held = split(seed)
    predicted = classify(paper[held], seed)
    per_digit = np.array([(predicted[labels[held] == d] == d).mean() for d in range(10)])
    return per_digit, float(per_digit.mean())
