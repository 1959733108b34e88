"""What the training loop asks of a model family: the few calls that differ between denoiser architectures
and objectives, behind one table entry, so the loop itself names no UNet and no noise-prediction target.

    family = family_of(base)                         # UNET for Stable Diffusion 1.x/2.x/SDXL
    part = family.batch(base, text, items, picks, cached, seeds, alphas, device, noise_offset)
    losses = family.losses(wrapped[family.denoiser], family.join([part, prior]), alphas, base, snr_gamma)

A diffusion-transformer family with a flow-matching objective (Flux, SD3) is another entry: its own
denoiser, its own batch (noisy latents and velocity target), loss, preservation target and evaluation loss.
How files name each family's layers (telling a Flux file from an SD3 one) is another table,
vislora/targets/families.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import denoise
from .bases import DiffusionBase
from .latents import Items, TextCache
from .preserve import base_prediction_batch


@dataclass(frozen=True)
class TrainingFamily:
    """One model family's training calls.

    denoiser:        the name of the pipeline component the adapters train and the loss calls ("unet"); it
                     also names its parameters in checkpoints
    preset:          the adapter preset trained when --preset is not given (the denoiser's attention)
    conv_preset:     the preset --conv-rank trains LoCon on (None: the denoiser has no convs to adapt, and
                     --conv-rank, the style recipe's default among them, adds nothing)
    text_encoders:   the text encoder components --train-text-encoder trains, each with its adapter preset
    multiple_of:     image sides must divide by this (the VAE's downsampling times the denoiser's)
    resolution:      the training size in pixels a base was made for
    schedule:        the objective's table over timesteps that batches and losses read (alphas_cumprod)
    batch:           one share of a training batch: noisy latents, conditioning and target per sample
    join:            parts (instance, class) one after another: one denoiser call for all
    losses:          per-sample losses [B] of one denoiser call on a joined batch
    preserve:        the preservation batch (one prompt, or one per sample) whose target is the frozen
                     base's own prediction
    eval_loss:       the objective at fixed noise and timesteps (a float)
    zero_loss:       the loss of predicting zero, per unit of the objective: worse than that is diverging
    """

    denoiser: str
    preset: str
    conv_preset: str | None
    text_encoders: Callable[[DiffusionBase], dict[str, str]]
    multiple_of: Callable[[DiffusionBase], int]
    resolution: Callable[[DiffusionBase], int]
    schedule: Callable[[DiffusionBase], torch.Tensor]
    batch: Callable[..., object]
    join: Callable[[list], object]
    losses: Callable[[nn.Module, object, torch.Tensor, DiffusionBase, float | None], torch.Tensor]
    preserve: Callable[[DiffusionBase, nn.Module, TextCache, object, str | list[str]], object]
    eval_loss: Callable[..., float]
    zero_loss: Callable[[float], float]


def _unet_multiple_of(base: DiffusionBase) -> int:
    return base.pipe.vae_scale_factor * 2 ** (len(base.pipe.unet.config.block_out_channels) - 1)


def _unet_batch(base: DiffusionBase, text: TextCache, items: Items, picks: list[int], cached, seeds: list[int],
                alphas: torch.Tensor, device, noise_offset: float) -> denoise.UNetBatch:
    return denoise.training_batch(base, base.pipe.vae, text, items, picks, cached, seeds, alphas, device, noise_offset)


def _unet_losses(unet: nn.Module, batch: denoise.UNetBatch, alphas: torch.Tensor, base: DiffusionBase,
                 snr_gamma: float | None) -> torch.Tensor:
    return denoise.unet_losses(unet, batch, alphas, base.prediction, snr_gamma)


def _unet_eval_loss(base: DiffusionBase, text: TextCache, items: Items, cached, alphas: torch.Tensor, device,
                    limit: int) -> float:
    return denoise.eval_loss(base, base.pipe.unet, base.pipe.vae, text, items, cached, alphas, device, limit)


# Noise-prediction (epsilon or v): both targets have unit variance, so predicting zero scores about 1, and
# the noise offset adds its variance to the noise's.
UNET = TrainingFamily(
    denoiser="unet",
    preset="unet.attn",
    conv_preset="unet.conv",
    text_encoders=lambda base: {"text_encoder": "text.attn",
                                **({"text_encoder_2": "text2.attn"} if base.is_sdxl else {})},
    multiple_of=_unet_multiple_of,
    resolution=lambda base: base.pipe.unet.config.sample_size * base.pipe.vae_scale_factor,
    schedule=lambda base: torch.as_tensor(base.pipe.scheduler.alphas_cumprod, dtype=torch.float32),
    batch=_unet_batch,
    join=denoise.cat,
    losses=_unet_losses,
    preserve=base_prediction_batch,
    eval_loss=_unet_eval_loss,
    zero_loss=lambda noise_offset: 1.0 + noise_offset ** 2,
)


def family_of(base: DiffusionBase) -> TrainingFamily:
    """The base's family: flow matching for a diffusion-transformer pipeline (SD3, Flux.1, Flux.2), else UNET."""
    if base.prediction == "flow":
        from .flow_family import FLOW  # it builds on this module's table entry type

        return FLOW
    return UNET


def multiple_of(base: DiffusionBase) -> int:
    """Image sides must divide by this for `base`."""
    return family_of(base).multiple_of(base)
