"""Preservation against the frozen base's own prediction ("diff output preservation"; kohya's
diff_output_preservation, ai-toolkit, OneTrainer's prior prediction): the class prompt's samples reuse the
instance samples' noisy latents and timesteps, and their target is what the base UNet (adapters off)
predicts there for the class prompt. No class images are drawn; the adapter is asked to leave the class
prompt's output unchanged exactly where it is being trained.

    prior = base_prediction_batch(base, unet, text, part, "a handwritten digit")   # UNetBatch, len(part)
    losses = denoise.unet_losses(unet, denoise.cat([part, prior]), ...)
"""

from __future__ import annotations

import torch
from torch import nn

from ..merge import disabled
from .bases import DiffusionBase
from .denoise import UNetBatch
from .latents import TextCache


def base_prediction_batch(base: DiffusionBase, unet: nn.Module, text: TextCache, part: UNetBatch,
                          prompt: str) -> UNetBatch:
    """`part`'s noisy latents and timesteps with `prompt`'s text states; the goal is the base's prediction
    there: every adapter on `base.pipe` (UNet and any trained text encoder) disabled, no gradient. `unet` is
    the unwrapped UNet (no DDP hooks)."""
    emb = text([prompt] * len(part), part.noisy.device)  # with the text encoders' adapters, as trained
    with torch.no_grad(), disabled(base.pipe):
        frozen = text([prompt] * len(part), part.noisy.device) if not text.enabled else emb
        extra = {}
        if part.pooled is not None:  # SDXL: the class prompt's pooled embedding, the instance's size/crop ids
            extra["added_cond_kwargs"] = {"text_embeds": frozen.pooled, "time_ids": part.time_ids}
        goal = unet(part.noisy, part.t, frozen.hidden, **extra).sample
    return UNetBatch(part.noisy, part.t, emb.hidden, emb.pooled if part.pooled is not None else None,
                     part.time_ids, goal.to(part.goal.dtype))
