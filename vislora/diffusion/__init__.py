"""Diffusion pipelines: bases (UNet families), prompts, captions, buckets, latents, the training objective,
batches, the shared training loop, drawing and `vislora generate`.

What the recipes use, by name (loaded on first use, so `vislora generate` and the studio do not pay for the
training loop's imports):

    from vislora.diffusion import Task, options, start, train, report
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # the shared training loop (train_loop.py) and the end of a run (run_end.py)
    "Session": "train_loop", "Task": "train_loop", "start": "train_loop", "train": "train_loop",
    "check_run_folder": "train_loop", "run_identity": "train_loop",
    "report": "run_end", "METADATA_KEY": "run_end",
    # the recipes' data: pictures and captions, sizes, prompts, class pictures, trigger words
    "Captioned": "captions", "scan_captioned": "captions", "image_files": "captions",
    "check_caption_files": "captions", "training_size": "training_data", "warn_long_prompts": "training_data",
    "bucketed": "training_data", "draw_class_images": "training_data", "check_trigger": "triggers",
    "trigger_words": "triggers",
    # model families
    "TrainingFamily": "family", "family_of": "family", "multiple_of": "family",
    # bases and pipelines
    "DiffusionBase": "bases", "load_pipeline": "bases", "add_source_options": "bases",
    "add_threads_option": "bases", "encode_prompts": "pipeline", "prompt_tokenizer": "pipeline",
}
_RECIPE_SUPPORT = {"run_main": "..train.runs"}  # a recipe's error handling, shared with classify

__all__ = ["options", *_EXPORTS, *_RECIPE_SUPPORT]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _RECIPE_SUPPORT:
        return getattr(importlib.import_module(_RECIPE_SUPPORT[name], __name__), name)
    if name == "options":
        return importlib.import_module(".options", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
