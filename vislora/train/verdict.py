"""The one line every training run ends with: `learned`, `barely changed` (naming the flag to change) or
`diverged`, decided from numbers alone so that each rule can be tested without a model.

    why = diverging(losses, bad_steps, window, ceiling)  # during training: a reason to stop, or None
    v = diffusion_verdict(eval_before=0.21, eval_after=0.17, moved=0.08, drift=0.01, spread_ratio=0.9,
                          toward=0.4, lr=1e-3, steps=400)
    v = classify_verdict(classes=5, losses=step_losses, val_loss=0.3, val_top1=0.9, lr=1e-2, steps=300)
    v.line()   # 'verdict: learned: eval loss 0.2100 -> 0.1700 (-19.0%); ...'
    v.to_dict()  # what metrics.json records under "verdict"

Diffusion: `moved` is the mean absolute pixel difference (pixels in [0, 1]) between the validation samples
drawn with the adapter off (strength 0) and on (strength 1) at the same seeds; `drift` the same on prompts that
are not the subject's (DreamBooth's class prompt); `spread_ratio` the samples' spread across seeds (mean
per-pixel standard deviation) with the adapter on, over the same with it off: near 0, every seed draws the same
picture (collapse); `toward` how much closer the samples come to their nearest training picture.
Classification: the validation (else training) cross-entropy against ln(classes), the loss of a uniform guess,
top-1 against the chance 1 / classes, and the shape of the per-step training losses (loss_trend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LEARNED, BARELY_CHANGED, DIVERGED = "learned", "barely changed", "diverged"

# During training. The running mean of the last `window` step losses above RISE times the mean of the first
# `window`: the run diverges. RISE is generous because a diffusion step's loss depends on its random timestep.
RISE = 4.0
HEALTHY = 1.5           # the running mean at most this times the first: weights worth keeping
BAD_STEPS = 3           # consecutive NaN/inf steps (skipped) before the run counts as diverged
# At the end, diffusion.
EVAL_RISE = 0.1         # eval loss this share above its value before training: diverged
MOVED = 0.02            # samples move less than this (mean |pixel difference|, 0..1): barely changed
TOWARD = 0.15           # or come less than this share of the way closer to the training pictures,
LOSS_LEARNED = 0.10     # while the eval loss fell less than this share (a stroke-weight style moves every
                        # stroke a little: the drawings keep their shapes, so they come no closer pixel by pixel
                        # to other pictures of the style, while the loss on those pictures falls by a fifth; a
                        # subject the base already drew now and then: -11%, 6% closer, drawn 81% of the time)
CHANGED = 0.10          # samples that move more than this changed, whichever way: not "barely changed" for
                        # coming no closer (a few-step sampler's drawings need not resemble any training picture)
COLLAPSE = 0.25         # samples' spread across seeds below this share of the base's: collapsed
LOSS_MOVED = 0.05       # eval loss fell less than this share: the step size is the problem (--lr), else --steps
# At the end, classification.
GAIN = 0.1              # loss at least this share below ln(classes), or
TOP1_GAIN = 0.2         # top-1 at least this share of the way from chance to 100%: learned
WORSE_THAN_GUESSING = 1.5  # final training loss above this times ln(classes): diverged


@dataclass
class Verdict:
    outcome: str                      # LEARNED, BARELY_CHANGED or DIVERGED
    reason: str                       # the numbers behind it, in words
    numbers: dict[str, float | int | str | None] = field(default_factory=dict)
    flag: str | None = None           # the flag to change (--lr, --steps, --epochs), or None

    def line(self) -> str:
        return line(self.to_dict())

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "reason": self.reason, "flag": self.flag, **self.numbers}


def line(record: dict) -> str:
    """The verdict's line, from the record metrics.json keeps (Verdict.to_dict)."""
    return f"verdict: {record['outcome']}: {record['reason']}"


def watch_window(total_steps: int, least: int = 3, most: int = 20) -> int:
    """Steps per running mean for `diverging`: a tenth of the run, within [least, most]."""
    return max(least, min(most, total_steps // 10))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def diverging(losses: list[float], bad_steps: int, window: int, ceiling: float, rise: float = RISE) -> str | None:
    """Why training should stop now, or None: BAD_STEPS skipped NaN/inf steps in a row; or the mean loss of
    the last `window` steps above `ceiling`, the loss of a trivial predictor (a diffusion model that predicts
    zero, a classifier that guesses uniformly); or above `rise` times the mean of the first `window` steps."""
    if bad_steps >= BAD_STEPS:
        return f"{bad_steps} steps in a row had NaN/inf loss or gradients"
    if len(losses) < window:
        return None
    last = _mean(losses[-window:])
    if math.isfinite(last) and last > ceiling:
        return (f"the loss rose to {last:.4g} (mean of the last {window} steps), worse than a trivial prediction "
                f"({ceiling:.4g})")
    first = _mean(losses[:window])
    if len(losses) >= 2 * window and math.isfinite(first) and math.isfinite(last) and last > rise * first:
        return f"the loss rose from {first:.4g} to {last:.4g} (mean of {window} steps)"
    return None


def healthy(losses: list[float], window: int, ceiling: float) -> bool:
    """Whether the weights now are worth keeping: the last `window` losses finite, their mean at most
    HEALTHY times the first `window`'s and under half the trivial prediction's `ceiling`."""
    if not losses:
        return True
    last = losses[-window:]
    if not all(math.isfinite(v) for v in last):
        return False
    return _mean(last) <= min(HEALTHY * _mean(losses[:window]), 0.5 * ceiling)


def stopped_verdict(reason: str, kept_step: int | None, numbers: dict | None = None) -> Verdict:
    """A run stopped early by `diverging`: it says why and which step's weights it kept."""
    kept = f"; kept the weights of step {kept_step}" if kept_step is not None else ""
    return Verdict(DIVERGED, f"stopped early: {reason}{kept}; lower --lr",
                   {"kept_step": kept_step, **(numbers or {})}, "--lr")


def _join(*parts: str, sep: str = ", ") -> str:
    return sep.join(p for p in parts if p)


def _finite(*values: float | None) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def diffusion_verdict(*, eval_before: float | None, eval_after: float | None, moved: float | None,
                      drift: float | None = None, spread_ratio: float | None = None, toward: float | None = None,
                      lr: float, steps: int, drift_prompt: str | None = None) -> Verdict:
    """learned / barely changed / diverged from the eval loss before and after training and how far the
    adapter moves the validation samples (see the module docstring for the measures)."""
    change = (eval_after - eval_before) / eval_before if eval_before and eval_after is not None else None
    numbers = {"eval_loss_before": eval_before, "eval_loss_after": eval_after, "eval_loss_change": change,
               "moved": moved, "drift": drift, "spread_ratio": spread_ratio, "toward": toward, "lr": lr,
               "steps": steps}
    if change is not None and _finite(change):
        loss_text = f"eval loss {eval_before:.4f} -> {eval_after:.4f} ({100 * change:+.1f}%)"
    else:  # no evaluation pictures (--eval-images 0), or NaN/inf
        loss_text = f"eval loss {eval_before} -> {eval_after}" if eval_before is not None else ""
    if not _finite(eval_after, moved, spread_ratio):
        return Verdict(DIVERGED, f"NaN/inf at the end ({_join(loss_text, f'samples moved {moved}')}); lower --lr",
                       numbers, "--lr")
    if change is not None and change > EVAL_RISE:
        return Verdict(DIVERGED, f"{loss_text}: the loss rose; lower --lr", numbers, "--lr")
    if spread_ratio is not None and spread_ratio < COLLAPSE:
        return Verdict(DIVERGED, f"the samples collapsed: their spread across seeds is {spread_ratio:.2f} of the "
                       f"base's{f' ({loss_text})' if loss_text else ''}; lower --lr", numbers, "--lr")
    moved_text = f"samples moved {moved:.4f} (mean |pixel difference| at strength 1 vs 0)" if moved is not None else ""
    if toward is not None:
        moved_text += f", {100 * toward:.0f}% closer to the training pictures"
    small = [f"moved under {MOVED}"] if moved is not None and moved < MOVED else []
    lagging = (toward is not None and toward < TOWARD and (change is None or -change < LOSS_LEARNED)
               and (moved is None or moved < CHANGED))
    small += [f"closer by under {100 * TOWARD:.0f}%"] if lagging else []
    if small:
        flag, now = ("--lr", f"{lr:g}") if change is None or -change < LOSS_MOVED else ("--steps", str(steps))
        return Verdict(BARELY_CHANGED, f"{_join(loss_text, moved_text)} ({' and '.join(small)}): raise {flag} "
                       f"(now {now})", numbers, flag)
    parts = [loss_text, moved_text]
    if drift is not None:
        note = f"drift {drift:.4f} on {drift_prompt!r}" if drift_prompt else f"drift {drift:.4f}"
        if moved and drift > 0.5 * moved:
            note += " (over half the subject's: other prompts change too)"
        parts.append(note)
    return Verdict(LEARNED, _join(*parts, sep="; "), numbers)


def loss_trend(losses: list[float]) -> dict[str, float | None]:
    """Numbers of a run's per-step training losses: the mean of its first and last `watch_window` steps, the
    fall from its second quarter to its last (how much it was still learning), and the highest mean of a
    later window of steps over the first's, less 1 (above 0: the loss got worse than it started)."""
    n = len(losses)
    if n == 0:
        return {"first_train_loss": None, "last_train_loss": None, "late_fall": None, "worst_rise": None}
    w = watch_window(n, least=1)
    first = _mean(losses[:w])
    later = [_mean(losses[i:i + w]) for i in range(w, n - w + 1, w)]
    second, last = losses[n // 4:max(n // 2, n // 4 + 1)], losses[3 * n // 4:]
    return {"first_train_loss": first, "last_train_loss": _mean(losses[-w:]),
            "late_fall": 1.0 - _mean(last) / _mean(second) if n >= 4 else None,
            "worst_rise": max(later) / first - 1.0 if later else None}


def classify_verdict(*, classes: int, losses: list[float], val_loss: float | None, val_top1: float | None,
                     lr: float, steps: int, steps_flag: str = "--steps") -> Verdict:
    """learned / barely changed / diverged for a classifier with a new head, from its per-step training
    losses (see loss_trend) and its last validation: the loss (validation, else training) against
    ln(classes), a uniform guess, and top-1 against chance."""
    guess, chance = math.log(classes), 1.0 / classes
    trend = loss_trend(losses)
    last_loss = trend["last_train_loss"]
    loss = val_loss if val_loss is not None else last_loss
    fall = 1.0 - loss / guess if loss is not None and _finite(loss) else None
    top1_gain = (val_top1 - chance) / (1.0 - chance) if val_top1 is not None else None
    numbers = {"classes": classes, "chance_loss": guess, "chance_top1": chance, **trend, "val_loss": val_loss,
               "val_top1": val_top1, "loss_fall": fall, "top1_gain": top1_gain, "lr": lr, "steps": steps}
    top1_text = f", val top-1 {100 * val_top1:.1f}% (chance {100 * chance:.1f}%)" if val_top1 is not None else ""
    loss_text = f"loss {loss:.4f} (a uniform guess: {guess:.4f}){top1_text}" if loss is not None else "no loss"
    if not _finite(loss, last_loss):
        return Verdict(DIVERGED, "NaN/inf loss at the end; lower --lr", numbers, "--lr")
    if last_loss is not None and last_loss > WORSE_THAN_GUESSING * guess:
        return Verdict(DIVERGED, f"training loss {last_loss:.4f} is worse than guessing ({loss_text}); lower --lr",
                       numbers, "--lr")
    # The training loss must have left the uniform guess (a near-uniform head's top-1 is luck), and the
    # validation must show it: a loss below the guess or a top-1 above chance.
    changed = last_loss is not None and last_loss < (1 - GAIN) * guess
    shown = val_loss is None or (fall is not None and fall >= GAIN) or (top1_gain is not None and
                                                                      top1_gain >= TOP1_GAIN)
    if changed and not shown:  # the training pictures are learned, the validation pictures are not
        return Verdict(BARELY_CHANGED, f"{loss_text}: the training loss fell to {last_loss:.4f} but validation "
                       "did not follow; add pictures, or augment more (--hflip, --crop-scale)", numbers, None)
    if not changed:
        if trend["late_fall"] is not None and trend["late_fall"] >= GAIN:  # on its way down: more of the same
            flag, advice = steps_flag, f"raise {steps_flag} (now {steps}): the loss was still falling"
        elif trend["worst_rise"] is not None and trend["worst_rise"] > 0:  # worse than at the start: overshoot
            flag, advice = "--lr", f"lower --lr (now {lr:g}): the loss rose above where it started"
        else:  # still the uniform guess on every batch: the steps are too small
            flag, advice = "--lr", f"raise --lr (now {lr:g})"
        return Verdict(BARELY_CHANGED, f"{loss_text}: {advice}", numbers, flag)
    return Verdict(LEARNED, loss_text, numbers)
