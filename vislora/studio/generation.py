"""The studio's link to `vislora generate` (vislora.diffusion.generate): the same pipeline loader, the same
sampling call and the same PNG text chunks, so the page's image equals the command's pixel for pixel.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import VisloraError
from ..diffusion import generate as cli
from .mix import Request


class ModelLoadError(VisloraError):
    """The --model folder is not a diffusers pipeline that loads."""


def load_pipeline(source: cli.Source) -> tuple[Any, cli.Source]:
    """`vislora generate`'s loader (float32, CPU unless CUDA) and the pinned source, with any failure as one
    ModelLoadError line."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return cli.source_pipeline(source, device, torch.float32)
    except VisloraError:
        raise  # already one line naming the flag (a pickle refused, configs missing offline)
    except Exception as e:  # diffusers and transformers raise many kinds; the user needs the folder and why
        raise ModelLoadError(f"--model {source.model}: the pipeline does not load: {type(e).__name__}: {e}") from None


def settings(request: Request, source: cli.Source, adapters: list[cli.LoraArg] = ()) -> cli.Settings:
    """The request as `vislora generate`'s Settings (one image; explicit width and height)."""
    return cli.Settings(source.model, request.prompt, request.negative, int(request.seed), int(request.steps),
                        float(request.guidance), 1, int(request.height), int(request.width), list(adapters),
                        model_config=source.config, revision=source.revision)


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
            p._interrupt = True  # diffusers' own early exit: the remaining steps are skipped
        return kwargs

    with torch.no_grad():
        (image,) = cli.run(pipe, settings(request, cli.Source("")), 1, "denoising", on_step_end=step_end)
    return None if stopped else image
