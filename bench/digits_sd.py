"""Does the digits Stable Diffusion base draw what it is asked? Generate, then read the drawings back.

    python bench/digits_sd.py                          # samples/digits_sd, guidance 5 and 7, 64 images per digit
    python bench/digits_sd.py --guidance 7 --grid docs/digits_sd_grid.png
    python bench/digits_sd.py --model samples/digits_dit     # the transformer base, same scorer

For each prompt "a handwritten digit zero" ... "nine" it draws --n images (fixed seeds, one batch per prompt,
the folder's sampler with --steps steps) and classifies them with samples/digit_scorer.py (an SVC on 8x8 scans).
Printed: accuracy per digit and the mean for each guidance scale, the same scorer on held-out real scans as the
reference, and what the empty prompt "" draws (a mix of digits when the prompt carries the information).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples"))

from digit_scorer import classify, reference_accuracy  # noqa: E402
from digits import DIGIT_WORDS, digit_caption  # noqa: E402


def load(model: Path):
    from diffusers import DiffusionPipeline

    # the folder's own pipeline class: StableDiffusionPipeline (digits_sd), StableDiffusion3Pipeline (digits_dit)
    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe, prompt: str, n: int, guidance: float, steps: int, seed: int) -> np.ndarray:
    """n images for one prompt, [n, 32, 32, 3] float in [0, 1]; seeded, so reruns draw the same images."""
    generator = torch.Generator().manual_seed(seed)
    out = pipe([prompt] * n, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
               output_type="np")
    return out.images


def save_grid(rows: list[np.ndarray], path: Path, scale: int = 3) -> None:
    """rows: one [k, H, W, 3] array per digit -> a PNG grid (one row per digit), upscaled by `scale`."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    image = Image.fromarray(np.rint(grid * 255).astype(np.uint8)).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "samples" / "digits_sd")
    p.add_argument("--n", type=int, default=64, help="images per digit prompt")
    p.add_argument("--guidance", type=float, nargs="+", default=[5.0, 7.0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="one is fastest on a shared machine")
    p.add_argument("--grid", type=Path, default=None, help="write a 10 x 8 sample grid PNG (first guidance)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load(args.model)
    results: dict = {}
    for g in args.guidance:
        start = time.perf_counter()
        per_digit, rows = [], []
        for d in range(10):
            images = draw(pipe, digit_caption(d), args.n, g, args.steps, args.seed + d)
            per_digit.append(float((classify(images) == d).mean()))
            rows.append(images[:8])
        results[g] = per_digit
        print(f"guidance {g:g}: mean {np.mean(per_digit):.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
        if args.grid is not None and g == args.guidance[0]:
            save_grid(rows, args.grid)
            print(f"wrote {args.grid}")
    empty = classify(draw(pipe, "", args.n, 1.0, args.steps, args.seed + 10))
    counts = np.bincount(empty, minlength=10)
    real, real_mean = reference_accuracy()

    header = "| digit | " + " | ".join(f"guidance {g:g}" for g in args.guidance) + " | real scans |"
    print("\n" + header + "\n|" + "---|" * (len(args.guidance) + 2))
    for d in range(10):
        cells = " | ".join(f"{results[g][d]:.3f}" for g in args.guidance)
        print(f"| {d} {DIGIT_WORDS[d]} | {cells} | {real[d]:.3f} |")
    means = " | ".join(f"**{np.mean(results[g]):.3f}**" for g in args.guidance)
    print(f"| mean | {means} | {real_mean:.3f} |")
    print(f"\nempty prompt '' ({args.n} images, no guidance) read as digits 0-9: {counts.tolist()}")
    return {"per_digit": results, "real": real.tolist(), "empty_counts": counts.tolist()}


if __name__ == "__main__":
    main()
