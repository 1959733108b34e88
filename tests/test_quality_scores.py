"""The quality scorecard's scoring (bench/quality_scores.py) on real scans transformed by each style: a
geometric style is undone and read right, and a style's move is 0 for the base's pictures and 1 for the
training pictures, whatever the style."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "samples"))

pytest.importorskip("sklearn")

from digit_scorer import split  # noqa: E402
from digit_styles import INVERSES, STYLES  # noqa: E402
from digits import paper_digits  # noqa: E402
from quality_scores import legibility, monotone, moved, one_token, reads, style_value  # noqa: E402

from vislora.train.plots import tile  # noqa: E402


@pytest.fixture(scope="module")
def scans() -> tuple[np.ndarray, np.ndarray]:
    """120 held-out real scans (the scorer was not fitted on them) as 32x32 paper images, and their digits."""
    paper, labels = paper_digits(32)
    held = split(0)[1][:120]
    return paper[held], labels[held]


@pytest.mark.parametrize("style", sorted(INVERSES))
def test_a_geometric_style_is_undone_and_read(scans, style):
    images, digits = scans
    turned = STYLES[style](images)
    assert np.abs(INVERSES[style](turned) - images).max() == 0.0  # an exact inverse
    assert reads(turned, digits, INVERSES[style]).mean() >= 0.97  # as the scans themselves
    assert reads(images, digits).mean() >= 0.97
    if style == "rot90":  # a quarter turn: hardly any digit reads as itself while turned
        assert reads(turned, digits).mean() <= 0.15
    assert legibility(turned, digits, style) >= 0.97


@pytest.mark.parametrize("style", ["rot90", "upside_down", "mirror", "bold", "thin", "italic"])
def test_the_move_is_0_for_the_base_and_1_for_the_training_pictures(scans, style):
    images, digits = scans
    base, target = style_value(images, digits, style), style_value(STYLES[style](images), digits, style)
    assert abs(target - base) > {"bold": 1.0, "thin": 0.5, "italic": 10.0}.get(style, 0.4)  # the measure sees it
    assert moved(base, base, target) == 0.0
    assert moved(target, base, target) == pytest.approx(1.0)
    halfway = moved((base + target) / 2, base, target)
    assert halfway == pytest.approx(0.5)


def test_a_half_styled_batch_moves_about_halfway(scans):
    images, digits = scans
    half = images.copy()
    half[::2] = STYLES["rot90"](images[::2])
    base, target = style_value(images, digits, "rot90"), style_value(STYLES["rot90"](images), digits, "rot90")
    assert 0.4 <= moved(style_value(half, digits, "rot90"), base, target) <= 0.6


def test_monotone_allows_noise_but_not_a_fall():
    assert monotone([0.0, 0.5, 1.0]) and monotone([0.0, 0.52, 0.5])
    assert not monotone([0.0, 0.9, 0.6])


def test_one_token_and_tiles():
    class Tokenizer:  # whole words in the vocabulary, anything else split into letters
        def tokenize(self, word):
            return [word] if word in {"zwx", "q"} else list(word)

    assert one_token(Tokenizer(), "zwx") and not one_token(Tokenizer(), "zkq")
    from PIL import Image

    cell = tile([Image.new("L", (32, 32), 255)] * 9, columns=5)
    assert cell.size == (5 * 32 + 4, 2 * 32 + 1)
