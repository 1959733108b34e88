"""How far an adapter moves a pipeline's samples: the same prompts and seeds drawn with the adapters off
(strength 0, the base) and on (strength 1), compared pixel by pixel.

    s = sample_shift(pipe, ["a sks dog", "a dog"], seeds=[0, 1, 2, 3], steps=25, guidance=7.5, size=512)
    s["a sks dog"]["moved"]     # mean |on - off| over pixels, channels and seeds; pixels in [0, 1]
    s["a dog"]["spread_on"]     # mean over pixels of the standard deviation across seeds, adapter on
    s = sample_shift(..., targets=training_pixels)   # adds "near_on" / "near_off": the mean distance of each
                                                     # sample to its nearest training picture

Drawn with the pipeline's own sampler at fixed seeds, so a base compared with itself moves exactly 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..merge import disabled
from .pipeline import denoiser_of, generate


def _pixels(images: list) -> np.ndarray:
    """PIL images as floats in [0, 1], [N, H, W, C]."""
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0 for im in images])


def _spread(pixels: np.ndarray) -> float:
    """Mean over pixels of the standard deviation across seeds (axis 0)."""
    return float(pixels.std(axis=0).mean()) if len(pixels) > 1 else 0.0


def nearest(samples: np.ndarray, targets: np.ndarray) -> float:
    """Mean over samples [N, H, W, C] of the mean |pixel difference| to the closest of targets [M, H, W, C]."""
    return float(np.mean([np.abs(targets - s[None]).mean(axis=(1, 2, 3)).min() for s in samples]))


def as_targets(pixels: list, size: int, most: int = 64) -> np.ndarray:
    """Training pictures (uint8 tensors [3, h, w]), at most `most` spread over the set, resized to size x size,
    as floats in [0, 1], [M, size, size, 3]."""
    import torch
    import torch.nn.functional as F

    picks = pixels if len(pixels) <= most else [pixels[i * len(pixels) // most] for i in range(most)]
    resized = [F.interpolate(p[None].float(), size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0] if tuple(p.shape[1:]) != (size, size) else p.float()
               for p in picks]
    return (torch.stack(resized).permute(0, 2, 3, 1) / 255.0).clamp(0, 1).double().numpy()


def sample_shift(pipe: Any, prompts: list[str], seeds: list[int], *, steps: int, guidance: float,
                 size: int | None = None, targets: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """Per prompt: `moved` (mean |pixel difference| between strength 1 and 0 at the same seeds), and the
    spread across seeds with the adapters on (`spread_on`) and off (`spread_off`); for the prompts in
    `targets` (pictures [M, H, W, C] in [0, 1], as `as_targets` makes them), the samples' distance to the
    nearest of them, on (`near_on`) and off (`near_off`)."""
    asked = [p for p in prompts for _ in seeds]
    each = seeds * len(prompts)
    denoiser = denoiser_of(pipe)
    was_training = denoiser.training
    denoiser.eval()
    on = _pixels(generate(pipe, asked, each, steps=steps, guidance=guidance, size=size))
    with disabled(pipe):
        off = _pixels(generate(pipe, asked, each, steps=steps, guidance=guidance, size=size))
    denoiser.train(was_training)
    result = {}
    for i, prompt in enumerate(prompts):
        rows = slice(i * len(seeds), (i + 1) * len(seeds))
        result[prompt] = {"moved": float(np.abs(on[rows] - off[rows]).mean()), "spread_on": _spread(on[rows]),
                          "spread_off": _spread(off[rows])}
        if targets and prompt in targets:
            result[prompt].update(near_on=nearest(on[rows], targets[prompt]),
                                  near_off=nearest(off[rows], targets[prompt]))
    return result
