"""What the quality scorecard (bench/quality.py) measures, as pure functions on image batches.

Images are any batch samples/digit_styles.as_ink takes (PIL list, [N, H, W(, 3)] uint8 or float in [0, 1]),
dark ink on light paper; `digits` is the digit each drawing was asked for, [N] int.

    reads(images, digits, undo=None) -> [N] bool   the scorer reads the asked digit (after `undo`, if given)
    legibility(images, digits, style) -> float     share read as asked; for a geometric style, in either
                                                   orientation (as drawn, or with the style undone)
    style_value(images, digits, style) -> float    the style's own measure: mean stroke width (bold, thin),
                                                   mean slant (italic), share read as asked only once the
                                                   transform is undone (geometric styles)
    moved(value, base, target) -> float            (value - base) / (target - base): 0 = the base's drawings,
                                                   1 = the training pictures
    monotone(values) -> bool                       never falls by more than MONOTONE_SLACK of the full move
    one_token(tokenizer, word) -> bool             the tokenizer keeps `word` whole
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples"))

from digit_scorer import classify  # noqa: E402
from digit_styles import INVERSES, as_ink, slant, stroke_width  # noqa: E402

MONOTONE_SLACK = 0.05  # sampling noise allowed between strengths, as a share of the full move

# Goals of issue 23: (threshold, direction) per measure; "min" means the value must be at least the threshold.
GOALS = {
    "fidelity_mean": 0.9, "fidelity_worst": 0.7, "preservation_mean": 0.9, "preservation_worst": 0.75,
    "style_move": 0.8, "style_legibility": 0.85, "seconds": 60.0, "classify_gap_points": 3.0,
}


def paper(images) -> np.ndarray:
    """Any image batch -> grey paper [N, H, W] float32 in [0, 1], 1 = white (what the style transforms take)."""
    return 1.0 - as_ink(images)


def reads(images, digits: Sequence[int] | np.ndarray, undo: Callable[[np.ndarray], np.ndarray] | None = None
          ) -> np.ndarray:
    """[N] bool: the scorer reads each drawing as the digit it was asked for (after `undo`, when given)."""
    grey = paper(images)
    if undo is not None:
        grey = undo(grey)
    return classify(grey) == np.asarray(digits)


def legibility(images, digits, style: str | None = None) -> float:
    """Share of drawings read as the asked digit; a geometric style's drawing counts in either orientation."""
    ok = reads(images, digits)
    if style in INVERSES:
        ok |= reads(images, digits, INVERSES[style])
    return float(ok.mean())


def _mean_width(images, digits) -> float:
    return float(np.mean(stroke_width(images)))


def _mean_slant(images, digits) -> float:
    return float(np.mean(slant(images)))


def _undone_share(style: str) -> Callable:
    """Share read as asked once the transform is undone, and not as drawn (a symmetric digit that reads
    either way says nothing about orientation, so it does not count)."""
    def measure(images, digits) -> float:
        undone, drawn = reads(images, digits, INVERSES[style]), reads(images, digits)
        return float((undone & ~drawn).mean())
    return measure


STYLE_MEASURES: dict[str, tuple[str, Callable]] = {
    "bold": ("stroke width (px)", _mean_width),
    "thin": ("stroke width (px)", _mean_width),
    "italic": ("slant (deg)", _mean_slant),
    **{name: ("share read once undone", _undone_share(name)) for name in INVERSES},
}


def style_value(images, digits, style: str) -> float:
    """The style's own measure of a batch (STYLE_MEASURES)."""
    if style not in STYLE_MEASURES:
        raise ValueError(f"no measure for style {style!r}; known: {sorted(STYLE_MEASURES)}")
    return STYLE_MEASURES[style][1](images, np.asarray(digits))


def moved(value: float, base: float, target: float) -> float:
    """How far `value` went from the base's drawings (0) toward the training pictures (1); NaN when the
    training pictures do not differ from the base's drawings by this measure."""
    span = target - base
    return float((value - base) / span) if abs(span) > 1e-9 else float("nan")


def monotone(values: Sequence[float], slack: float = MONOTONE_SLACK) -> bool:
    """True when each value is at least the one before, less `slack` (noise)."""
    return all(b >= a - slack for a, b in zip(values, values[1:]))


def one_token(tokenizer, word: str) -> bool:
    """The tokenizer keeps `word` as a single token (a made-up trigger split in pieces can take a prompt over)."""
    return len(tokenizer.tokenize(word)) == 1


def pixels_equal(a, b, tolerance: int = 2) -> bool:
    """Two batches of drawings are the same picture for picture, within `tolerance` of 255 per pixel."""
    x, y = (np.stack([np.asarray(im.convert("RGB"), dtype=np.int16) for im in batch]) for batch in (a, b))
    return bool(np.abs(x - y).max() <= tolerance)
