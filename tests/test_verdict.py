"""The verdict's rules on numbers alone: when a run is stopped, and which of learned / barely changed /
diverged it ends with (the recipe runs that trigger each are in test_recipe.py and test_sd_verdict.py)."""

from __future__ import annotations

import math

import pytest

from vislora.train import verdict
from vislora.train.verdict import BARELY_CHANGED, DIVERGED, LEARNED

NOISY = [0.17, 0.03, 0.09, 0.39, 0.27, 0.07, 0.38, 0.02, 0.34, 0.01, 0.36, 0.35, 0.47, 0.11, 0.62, 0.18, 1.06,
         0.04, 0.27, 0.13, 0.49, 0.02, 0.55, 0.20]  # a healthy diffusion run's step losses (random timesteps)


def test_a_healthy_noisy_run_goes_on():
    assert verdict.diverging(NOISY, bad_steps=0, window=5, ceiling=2.0) is None
    assert verdict.healthy(NOISY, 5, 2.0)


def test_non_finite_steps_in_a_row_stop_the_run():
    assert verdict.diverging(NOISY, bad_steps=verdict.BAD_STEPS - 1, window=5, ceiling=2.0) is None
    why = verdict.diverging(NOISY + [math.nan] * 3, bad_steps=verdict.BAD_STEPS, window=5, ceiling=2.0)
    assert why == "3 steps in a row had NaN/inf loss or gradients"
    assert not verdict.healthy(NOISY + [math.nan], 5, 2.0)


def test_a_loss_worse_than_a_trivial_prediction_stops_the_run():
    """lr 1 on the digits base: the loss jumps at step 3 and stays above predicting zero (2 with a prior term)."""
    losses = [0.166, 0.52, 2.806, 2.93, 2.814, 2.395]
    assert verdict.diverging(losses[:5], 0, 5, 2.0) is None  # the mean of the first five is 1.85
    assert "worse than a trivial prediction (2)" in verdict.diverging(losses, 0, 5, 2.0)
    assert not verdict.healthy(losses[:5], 5, 2.0)  # 1.85 is over half the ceiling: not worth keeping


def test_a_loss_rising_from_its_start_stops_the_run():
    losses = [0.1] * 5 + [0.3] * 4 + [0.5]
    assert verdict.diverging(losses, 0, 5, ceiling=10.0) is None  # 0.34 < 4 x 0.1
    why = verdict.diverging(losses[:5] + [0.5] * 5, 0, 5, ceiling=10.0)
    assert why == "the loss rose from 0.1 to 0.5 (mean of 5 steps)"


@pytest.mark.parametrize("total, window", [(8, 3), (100, 10), (400, 20), (10_000, 20)])
def test_watch_window_is_a_tenth_within_bounds(total, window):
    assert verdict.watch_window(total) == window


def _diffusion(**kw):
    numbers = dict(eval_before=0.064, eval_after=0.059, moved=0.27, drift=0.11, spread_ratio=0.59, toward=0.46,
                   lr=5e-3, steps=300, drift_prompt="a handwritten digit")
    return verdict.diffusion_verdict(**{**numbers, **kw})


def test_diffusion_learned_reports_its_numbers():
    v = _diffusion()
    assert v.outcome == LEARNED and v.flag is None
    assert v.line() == ("verdict: learned: eval loss 0.0640 -> 0.0590 (-7.8%); samples moved 0.2700 (mean |pixel "
                        "difference| at strength 1 vs 0), 46% closer to the training pictures; drift 0.1100 on "
                        "'a handwritten digit'")
    assert v.to_dict()["toward"] == 0.46 and v.to_dict()["outcome"] == "learned"
    assert "other prompts change too" in _diffusion(drift=0.2).reason


@pytest.mark.parametrize("kw, flag", [
    (dict(eval_after=0.06399, moved=0.0001, toward=0.0), "--lr"),       # nothing moved: the step is too small
    (dict(eval_after=0.060, moved=0.04, toward=0.06), "--steps"),       # the loss falls, the samples lag
    (dict(eval_after=0.06399, moved=0.09, toward=-0.2), "--lr"),       # moved a little, and not closer
    (dict(eval_after=0.06399, moved=0.01, toward=None), "--lr"),        # no training pictures to compare
])
def test_diffusion_barely_changed_names_the_flag(kw, flag):
    v = _diffusion(**kw)
    assert v.outcome == BARELY_CHANGED and v.flag == flag
    assert v.reason.endswith(f"raise {flag} (now {5e-3:g})" if flag == "--lr" else "raise --steps (now 300)")


@pytest.mark.parametrize("kw, words", [
    (dict(eval_after=0.073), "the loss rose"),                      # +14%
    (dict(spread_ratio=0.1), "the samples collapsed"),
    (dict(eval_after=math.nan), "NaN/inf"),
    (dict(moved=math.inf), "NaN/inf"),
])
def test_diffusion_diverged(kw, words):
    v = _diffusion(**kw)
    assert v.outcome == DIVERGED and words in v.reason and v.flag == "--lr"


def test_a_stopped_run_says_which_weights_it_kept():
    v = verdict.stopped_verdict("step 6: the loss rose", 5, {"lr": 1.0})
    assert v.to_dict() == {"outcome": DIVERGED, "reason": "stopped early: step 6: the loss rose; kept the weights "
                           "of step 5; lower --lr", "flag": "--lr", "kept_step": 5, "lr": 1.0}


def _classify(losses, **kw):
    numbers = dict(classes=5, val_loss=0.6, val_top1=0.8, lr=1e-3, steps=len(losses))
    return verdict.classify_verdict(losses=losses, **{**numbers, **kw})


FALLING = [2.0 - 0.01 * i for i in range(40)]                   # 2.0 -> 1.61: on its way down
AT_GUESS = [1.6094 + 0.001 * (-1) ** i for i in range(40)]      # a uniform head: ln 5 on every batch
SWINGING = [1.7] * 4 + [1.6, 1.9] * 18                          # lr too high: worse than it started
LEARNING = [2.0 * 0.95 ** i for i in range(40)]                  # 2.0 -> 0.28


def test_loss_trend_numbers():
    t = verdict.loss_trend(FALLING)
    assert t["first_train_loss"] == pytest.approx(2.0 - 0.01 * 1.5) and t["late_fall"] == pytest.approx(
        1 - (2.0 - 0.01 * 34.5) / (2.0 - 0.01 * 14.5))
    assert t["worst_rise"] < 0  # every later window lower than the first
    assert verdict.loss_trend(SWINGING)["worst_rise"] == pytest.approx(1.75 / 1.7 - 1)


def test_classify_verdicts():
    assert _classify(LEARNING).outcome == LEARNED
    assert _classify(LEARNING, val_loss=2.0).outcome == LEARNED  # over-confident but right: top-1 decides
    still = _classify(AT_GUESS, val_loss=1.61, val_top1=0.22)
    assert still.outcome == BARELY_CHANGED and still.reason.endswith("raise --lr (now 0.001)")
    slow = _classify(FALLING, val_loss=1.7, val_top1=0.3, steps_flag="--epochs")
    assert slow.flag == "--epochs" and slow.reason.endswith("raise --epochs (now 40): the loss was still falling")
    swings = _classify(SWINGING, val_loss=1.62, val_top1=0.21, lr=3e-2)
    assert swings.flag == "--lr" and swings.reason.endswith("lower --lr (now 0.03): the loss rose above where it "
                                                            "started")
    # the training pictures are learned, the validation ones are not (the defaults on the shapes)
    memorised = _classify(LEARNING, val_loss=2.33, val_top1=0.356)
    assert memorised.outcome == BARELY_CHANGED and memorised.flag is None and "did not follow" in memorised.reason
    assert _classify([1.6] * 10 + [9.0] * 10, val_loss=9.0, val_top1=0.2).outcome == DIVERGED
    assert _classify(LEARNING, val_loss=math.nan).outcome == DIVERGED
    no_val = _classify(LEARNING, val_loss=None, val_top1=None)
    assert no_val.outcome == LEARNED and "top-1" not in no_val.reason


def test_diffusion_without_an_eval_loss_judges_by_the_samples():
    v = _diffusion(eval_before=None, eval_after=None)
    assert v.outcome == LEARNED and v.reason.startswith("samples moved 0.2700")
    still = _diffusion(eval_before=None, eval_after=None, moved=0.001)
    assert still.flag == "--lr" and still.reason.startswith("samples moved 0.0010")


def test_samples_that_moved_far_changed_whichever_way_they_went():
    """A few-step sampler's drawings need not come closer to any training picture: moving them this much is
    a change, not 'barely changed'."""
    v = _diffusion(eval_after=0.06399, moved=0.18, toward=-0.18)
    assert v.outcome == "learned" and "-18% closer" in v.reason
