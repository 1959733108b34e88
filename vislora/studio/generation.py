"""The studio's link to image generation: load the base, draw one image, write it as a PNG with its settings.

These are the functions `vislora generate` uses, so the page's image equals the command's pixel for pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import VisloraError
from .mix import Request


class ModelLoadError(VisloraError):
    """The --model folder is not a diffusers pipeline that loads."""


def load_pipeline(model_dir: str) -> Any:
    from diffusers import DiffusionPipeline

    path = Path(model_dir)
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"--model {model_dir}: not a diffusers pipeline folder (no model_index.json)")
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), use_safetensors=True, torch_dtype=torch.float32)
    except Exception as e:  # diffusers raises many kinds; the user needs one line and the folder's name
        raise ModelLoadError(f"--model {model_dir}: the pipeline does not load: {type(e).__name__}: {e}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_image(pipe: Any, request: Request, on_step: Callable[[int, int], None] | None = None,
                   stop: Callable[[], bool] = lambda: False) -> Any:
    """One PIL image for `request` from the pipeline as it is (adapters already set); None if `stop()` said so."""
    stopped = False

    def step_end(p: Any, i: int, t: Any, kwargs: dict) -> dict:
        nonlocal stopped
        if on_step is not None:
            on_step(i + 1, request.steps)
        if stop():
            stopped = True
            p._interrupt = True
        return kwargs

    generator = torch.Generator("cpu").manual_seed(int(request.seed))
    with torch.no_grad():
        out = pipe(prompt=request.prompt, negative_prompt=request.negative or None,
                   num_inference_steps=int(request.steps), guidance_scale=float(request.guidance),
                   width=int(request.width), height=int(request.height), generator=generator,
                   callback_on_step_end=step_end)
    return None if stopped else out.images[0]
