"""The DreamBooth and style checks of tests/test_defaults.py on the shipped transformer base (samples/digits_dit,
an SD3 pipeline), with the same recipe defaults: a module of its own, so that test workers run the two bases
side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_defaults import (SAMPLES, pipe,  # noqa: F401 (the checks and their pipeline fixture, run here)
                           test_dreambooth_defaults_learn_the_subject_and_keep_the_other_digits,
                           test_style_defaults_move_toward_the_pictures_and_stay_legible)


@pytest.fixture(scope="module")
def base() -> Path:
    return SAMPLES / "digits_dit"
