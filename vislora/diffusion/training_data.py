"""The checks and loading every diffusion recipe does on its pictures and prompts, once the base is loaded:
the training size, the prompts' token lengths, the pictures in their aspect-ratio buckets, and the class
pictures prior preservation draws with the base."""

from __future__ import annotations

import warnings
from pathlib import Path

from accelerate import Accelerator
from tqdm.auto import tqdm

from ..images import IMAGE_SUFFIXES, DatasetError
from ..train.plots import save_png
from .bases import DiffusionBase
from .buckets import bucket_sizes
from .captions import Captioned
from .family import family_of
from .latents import Items, load_items
from .pipeline import check_prompts, generate


def training_size(base: DiffusionBase, resolution: int | None) -> int:
    """--resolution, or the base's own size; refused unless the image sides divide as the base needs."""
    family = family_of(base)
    resolution = resolution or family.resolution(base)
    if resolution % family.multiple_of(base):
        raise DatasetError(f"--resolution {resolution}: must be a multiple of {family.multiple_of(base)} for this model")
    return resolution


def warn_long_prompts(base: DiffusionBase, prompts: dict[str, str], main: bool) -> None:
    """A warning (main process) per prompt the tokenizers cut; `prompts` maps where it came from to the text."""
    for line in check_prompts(base.pipe, prompts):
        if main:
            warnings.warn(line, stacklevel=2)


def bucketed(base: DiffusionBase, data: Captioned, resolution: int, *, square: bool, first_only: bool = False
             ) -> Items:
    """The pictures fitted to aspect-ratio buckets of about resolution^2 (square: one centre-cropped size;
    first_only: the first bucket only, as class pictures use)."""
    sizes = bucket_sizes(resolution, family_of(base).multiple_of(base), square=square)
    return load_items(data, sizes[:1] if first_only else sizes)


def draw_class_images(base: DiffusionBase, accelerator: Accelerator, folder: Path, prompt: str, count: int, *,
                      seed: int, steps: int, guidance: float, resolution: int, progress: bool) -> Path:
    """`folder` with at least `count` pictures; only the missing ones are drawn with the base (main process;
    seeds continue from the count already there), each written atomically."""
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        have = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
        missing = range(have, count)
        bar = tqdm(total=len(missing), desc="class images", disable=None if progress else True, leave=False)
        for start in range(missing.start, missing.stop, 4):
            index = list(range(start, min(start + 4, missing.stop)))
            drawn = generate(base.pipe, [prompt] * len(index), [seed * 100_003 + i for i in index],
                             steps=steps, guidance=guidance, size=resolution)
            for i, image in zip(index, drawn):
                save_png(folder / f"class-{i:05d}.png", image)
            bar.update(len(index))
        bar.close()
    accelerator.wait_for_everyone()
    return folder
