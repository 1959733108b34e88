"""Demo: DreamBooth and style LoRA on the digits diffusion base, measured by a digit classifier and by image
statistics, on a CPU in a few minutes.

    python samples/demo_sd.py              # both parts; samples/demo.py calls dreambooth() and styles()

DreamBooth: five scans of one handwritten digit (a 7) are taught as "a sks digit" ("sks" is one token in this
tokenizer: a trigger split into pieces can take over the prompt), with and without prior preservation (the
frozen base's own prediction for "a handwritten digit" as the target; docs/defaults.md). Printed: how often
"a sks digit" draws a 7 before and after (fidelity), and how often "a handwritten digit zero" ... "nine" still
draw their digit, for all nine other digits (preservation).
Each adapter's evaluation loss (fixed noise and timesteps over its training pictures) before -> after training
is printed too: the recipe's own measure that it learned.

Style: two adapters from transformed digit folders, bold (thickened strokes) and italic (sheared), captioned
"a handwritten digit three in bold style". Both parts run the recipes' defaults: no learning rate, steps or
rank is tuned here. Printed: the stroke width and slant of the drawings at adapter
strength 0, 0.5 and 1. Every number is measured here; the sample grids are saved and their paths printed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples"))

from digit_scorer import classify  # noqa: E402
from digit_styles import slant, stroke_width, write_style_folder  # noqa: E402
from digits import DIGIT_WORDS, paper_digits, to_rgb_uint8  # noqa: E402

import vislora  # noqa: E402
from vislora.recipes import dreambooth_sd, style_sd  # noqa: E402
from vislora.diffusion.bases import load_pipeline  # noqa: E402
from vislora.diffusion.pipeline import generate  # noqa: E402
from vislora.train.plots import save_grid  # noqa: E402

BASE = ROOT / "samples" / "digits_sd"
DIGITS_DIT = ROOT / "samples" / "digits_dit"  # the diffusion-transformer base (StableDiffusion3Pipeline)
OUT = ROOT / "runs" / "demo"
SUBJECT = 7                   # the digit taught as "sks"
SUBJECT_PROMPT, CLASS_PROMPT = "a sks digit", "a handwritten digit"
OTHER_DIGITS = tuple(d for d in range(10) if d != SUBJECT)  # these prompts should keep drawing their digit
N_DRAWN, SAMPLE_STEPS, GUIDANCE = 32, 15, 5.0
COMMON = ["--threads", "1", "--no-progress", "--overwrite", "--sample-steps", str(SAMPLE_STEPS),
          "--guidance", str(GUIDANCE),
          "--seed", "0"]
# The recipes' defaults (optimizer, lr, steps, batch, rank): only what to draw in the validation grids is set.
DREAMBOOTH = STYLE = ["--validation-seeds", "0", "1", "2", "3", "4", "5", "6", "7"]
STRENGTHS = (0.0, 0.5, 1.0)


def _draw(pipe, prompts: list[str], seed: int = 1000) -> list:
    return generate(pipe, prompts, [seed + i for i in range(len(prompts))], steps=SAMPLE_STEPS, guidance=GUIDANCE)


def _share(images, digit: int) -> float:
    return float((classify(images) == digit).mean())


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _eval_losses(runs: dict[str, Path]) -> dict[str, tuple[float, float]]:
    """Each run's evaluation loss (fixed noise and timesteps over its training pictures), before -> after."""
    metrics = {name: json.loads((out / "metrics.json").read_text()) for name, out in runs.items()}
    return {name: (m["eval_loss_before"], m["eval_loss_after"]) for name, m in metrics.items()}


def _eval_line(losses: dict[str, tuple[float, float]]) -> str:
    return "  eval loss (fixed noise and timesteps): " + ", ".join(f"{name} {a:.4f} -> {b:.4f}"
                                                                   for name, (a, b) in losses.items())


def subject_folder(root: Path, n: int = 5) -> Path:
    """n real scans of the subject digit as 32x32 PNGs."""
    from PIL import Image

    paper, labels = paper_digits(32)
    root.mkdir(parents=True, exist_ok=True)
    for i, rgb in zip(np.flatnonzero(labels == SUBJECT)[:n], to_rgb_uint8(paper[labels == SUBJECT][:n])):
        Image.fromarray(rgb, mode="RGB").save(root / f"{int(i):04d}.png")
    return root


def dreambooth(base: Path = BASE, out: Path = OUT / "dreambooth", variants: tuple[str, ...] = ("prior", "no_prior"),
               title: str = "the digits base") -> dict:
    """Teach the subject with prior preservation and without (`variants`); measure subject fidelity and drift."""
    started = time.perf_counter()
    data = subject_folder(out / "instance")
    prompts = {SUBJECT_PROMPT: SUBJECT, **{f"a handwritten digit {DIGIT_WORDS[d]}": d for d in OTHER_DIGITS}}
    pipe = load_pipeline(str(base)).pipe
    drawn = {"base": {p: _draw(pipe, [p] * N_DRAWN) for p in prompts}}
    preservation = {"prior": ["--prior-preservation", "--class-prompt", CLASS_PROMPT], "no_prior": []}
    for name in variants:
        extra = preservation[name]
        status = dreambooth_sd.main(["--model", str(base), "--instance-data", str(data), "--instance-prompt",
                                     SUBJECT_PROMPT, "--out", str(out / name), *COMMON, *DREAMBOOTH, *extra])
        if status:
            raise SystemExit(status)
        vislora.load_adapter(pipe, out / name / "adapter.safetensors", name=name)
        drawn[name] = {p: _draw(pipe, [p] * N_DRAWN) for p in prompts}
        vislora.remove(pipe, name)
    rates = {k: {p: _share(images, prompts[p]) for p, images in by_prompt.items()} for k, by_prompt in drawn.items()}
    shown = [SUBJECT_PROMPT, *[f"a handwritten digit {DIGIT_WORDS[d]}" for d in (3, 6)]]
    grid = save_grid(out / "compare.png", [drawn[k][p][:8] for k in drawn for p in shown],
                     [f"{k}: {p}" for k in drawn for p in shown], f"DreamBooth on {title}", scale=2)
    steps = json.loads((out / variants[0] / "metrics.json").read_text())["steps"]
    print(f"\nDreamBooth on {title}: 5 scans of a {SUBJECT} taught as {SUBJECT_PROMPT!r}, the recipe's defaults ({steps} "
          f"steps; {N_DRAWN} drawings per prompt, read by the digit classifier)")
    width = len(repr(SUBJECT_PROMPT))
    print(f"  {'model':<31} {'fidelity':>{width}}   preservation: 'a handwritten digit X' draws an X, X =")
    print(f"  {'':<31} {SUBJECT_PROMPT!r:>{width}}   " + " ".join(f"{d:>4}" for d in OTHER_DIGITS) + "   worst")
    labels = {"base": "base", "prior": "adapter, prior preservation", "no_prior": "adapter, no prior preservation"}
    for key, by_prompt in rates.items():
        kept = list(by_prompt.values())[1:]
        print(f"  {labels[key]:<31} {100 * by_prompt[SUBJECT_PROMPT]:>{width - 1}.0f}%   " +
              " ".join(f"{100 * r:>3.0f}%" for r in kept) + f"   {100 * min(kept):>4.0f}%")
    losses = _eval_losses({labels[k].removeprefix("adapter, "): out / k for k in variants})
    print(_eval_line(losses))
    print(f"  grids: {_relative(grid)}, {_relative(out / variants[0] / 'samples')}/")
    print(f"  ({time.perf_counter() - started:.0f} s)")
    return {"rates": rates, "grid": str(grid), "eval_loss": losses}


def styles(base: Path = BASE, out: Path = OUT / "style", names: tuple[str, ...] = ("bold", "italic"),
           title: str = "the digits base") -> dict:
    """Train style adapters (bold, italic); measure stroke width and slant at strengths 0, 0.5, 1."""
    started = time.perf_counter()
    pipe = load_pipeline(str(base)).pipe
    results, rows, labels = {}, [], []
    for style in names:
        data = write_style_folder(out / f"{style}_data", style, per_digit=8)
        status = style_sd.main(["--model", str(base), "--data", str(data), "--out", str(out / style), *COMMON, *STYLE])
        if status:
            raise SystemExit(status)
        prompts = [f"a handwritten digit {DIGIT_WORDS[d % 10]} in {style} style" for d in range(N_DRAWN)]
        vislora.load_adapter(pipe, out / style / "adapter.safetensors", name=style)
        for strength in STRENGTHS:
            vislora.set_strength(pipe, style, strength)
            images = _draw(pipe, prompts)
            results[(style, strength)] = (float(np.mean(stroke_width(images))), float(np.mean(slant(images))),
                                          float(np.mean(classify(images) == np.arange(N_DRAWN) % 10)))
            rows.append(images[:10])
            labels.append(f"{style} at strength {strength:g}")
        vislora.remove(pipe, style)
    grid = save_grid(out / "strengths.png", rows, labels, f"style adapters on {title} at strength 0, 0.5, 1", scale=2)
    each = "s from 80 captioned pictures each" if len(names) > 1 else " from 80 captioned pictures"
    print(f"\nStyle on {title}: {' and '.join(names)} adapter{each} "
          f"({N_DRAWN} drawings per row, digits 0-9)")
    print(f"  {'adapter':<8} {'strength':>8} {'stroke width (px)':>18} {'slant (deg)':>12} {'read as asked':>14}")
    for (style, strength), (width, lean, readable) in results.items():
        print(f"  {style:<8} {strength:>8g} {width:>18.2f} {lean:>12.1f} {100 * readable:>13.0f}%")
    losses = _eval_losses({style: out / style for style in names})
    print(_eval_line(losses))
    print("  adapters: " + ", ".join(_relative(out / style / "adapter.safetensors") for style in names))
    print(f"  grid: {_relative(grid)}  ({time.perf_counter() - started:.0f} s)")
    return {"results": {f"{s} {k:g}": v for (s, k), v in results.items()}, "grid": str(grid), "eval_loss": losses}


def main() -> int:
    torch.set_num_threads(1)  # on shared or busy cores, one thread is faster than two waiting on each other
    if not (BASE / "model_index.json").is_file():
        print(f"{_relative(BASE)} is missing: restore it with `git checkout -- {_relative(BASE)}`, or make one "
              f"with `python samples/make_digits_sd.py --out {_relative(BASE)}` (docs/diffusion.md: how it was made)",
              file=sys.stderr)
        return 1
    dreambooth()
    styles()
    return 0


if __name__ == "__main__":
    sys.exit(main())
