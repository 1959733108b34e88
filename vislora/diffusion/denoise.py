"""One denoising batch of a diffusion recipe: its inputs drawn per sample, one UNet call, per-sample losses;
and the evaluation loss, the same objective at fixed noise and timesteps.

    part = training_batch(base, vae, text, items, [3, 0], cached, seeds, alphas, device)   # UNetBatch, B = 2
    both = cat([part, prior_part])                 # instance and class samples in one batch of 2B
    losses = unet_losses(unet, both, alphas, base.prediction, snr_gamma)                    # [2B]
    inst, prior = losses.split([len(part), len(prior_part)])

    before = eval_loss(base, unet, vae, text, items, cached, alphas, device)                # a float

Every sample's draws (latent noise, diffusion noise, timestep) come from its own seed, and the UNet treats
the samples of a batch independently (group norm, no batch statistics), so one call on the concatenation
computes what separate calls compute, up to float summation order.

The evaluation loss is the mean over up to `limit` pictures (spread over the set) and over `EVAL_STEPS`
timesteps spread over the schedule, t_k = (2k + 1) T / (2 EVAL_STEPS), of the plain squared error (no SNR
weights, no noise offset), at the picture's latent mean with noise seeded by the picture's index alone: the
same numbers in every run and at every evaluation, so its changes are the model's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from .latents import Items, TextCache, latent_params
from .bases import DiffusionBase
from .pipeline import sdxl_time_ids
from . import loss as dl
from ..basics import derive_seed

EVAL_STEPS = 8
_EVAL = 5  # derive_seed purpose of the evaluation noise (sampling, buckets and the recipes use 0-4)


@dataclass
class UNetBatch:
    """One UNet call: noisy latents x_t [B, C, h, w], timesteps t [B], text states [B, L, D], SDXL's pooled
    text embedding [B, P] and size/crop ids [B, 6] (None for SD 1.x/2.x), and the regression target
    [B, C, h, w] (the noise, or v)."""

    noisy: torch.Tensor
    t: torch.Tensor
    hidden: torch.Tensor
    pooled: torch.Tensor | None
    time_ids: torch.Tensor | None
    goal: torch.Tensor

    def __len__(self) -> int:
        return len(self.t)


def cat(parts: list[UNetBatch]) -> UNetBatch:
    """The parts one after another along the batch axis (their latents must have one size)."""
    def join(name: str) -> torch.Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return UNetBatch(**{f.name: join(f.name) for f in fields(UNetBatch)})


def make_batch(base: DiffusionBase, text: TextCache, items: Items, indices: list[int], x0: torch.Tensor,
               noise: torch.Tensor, t: torch.Tensor, alphas: torch.Tensor, device) -> UNetBatch:
    """x_t and the target from clean latents x0 [B, C, h, w], noise and timesteps t [B]; the pictures'
    captions as text states; SDXL's micro-conditioning (original size, crop, target size) per picture."""
    emb = text([items.data.captions[i] for i in indices], device)
    pooled = ids = None
    if base.is_sdxl:
        pooled = emb.pooled
        ids = torch.stack([sdxl_time_ids(items.data.sizes[i][::-1], items.crops[i], tuple(items.pixels[i].shape[1:]))
                           for i in indices]).to(device)
    return UNetBatch(dl.add_noise(x0, noise, t, alphas), t, emb.hidden, pooled, ids,
                     dl.target(x0, noise, t, alphas, base.prediction))


def training_batch(base: DiffusionBase, vae: nn.Module, text: TextCache, items: Items, indices: list[int], cached,
                   seeds: list[int], alphas: torch.Tensor, device, noise_offset: float = 0.0) -> UNetBatch:
    """Sample j draws its latent noise, diffusion noise and timestep from a generator seeded by seeds[j]."""
    mean, std = latent_params(vae, items, indices, cached, device)           # [B, C, h, w]
    draws = [dl.draw(tuple(mean.shape[1:]), torch.Generator().manual_seed(s), len(alphas), noise_offset)
             for s in seeds]
    eps = torch.stack([d.latent_noise for d in draws]).to(device)
    noise = torch.stack([d.noise for d in draws]).to(device)
    t = torch.tensor([d.timestep for d in draws], device=device)
    x0 = (mean + std * eps) * vae.config.scaling_factor
    return make_batch(base, text, items, indices, x0, noise, t, alphas, device)


def unet_losses(unet: nn.Module, batch: UNetBatch, alphas: torch.Tensor, prediction: str,
                snr_gamma: float | None = None) -> torch.Tensor:
    """Per-sample losses [B] of one UNet call: min-SNR weight x mean over (C, h, w) of (pred - target)^2."""
    extra = {}
    if batch.pooled is not None:
        extra["added_cond_kwargs"] = {"text_embeds": batch.pooled, "time_ids": batch.time_ids}
    pred = unet(batch.noisy, batch.t, batch.hidden, **extra).sample
    return dl.per_sample_loss(pred, batch.goal) * dl.snr_weights(batch.t, alphas, snr_gamma, prediction)


def eval_timesteps(num_timesteps: int, count: int = EVAL_STEPS) -> list[int]:
    """`count` timesteps at the centres of equal slices of the schedule: 62, 187, ..., 937 for 1000 and 8."""
    return [(2 * k + 1) * num_timesteps // (2 * count) for k in range(count)]


def eval_picks(n: int, limit: int) -> list[int]:
    """Up to `limit` of n picture indices, spread evenly over the set (all of them when n <= limit)."""
    return list(range(n)) if n <= limit else [i * n // limit for i in range(limit)]


@torch.no_grad()
def eval_loss(base: DiffusionBase, unet: nn.Module, vae: nn.Module, text: TextCache, items: Items, cached,
              alphas: torch.Tensor, device, limit: int = 16) -> float:
    """The mean plain denoising loss at fixed noise and timesteps (see the module docstring); one UNet call
    of EVAL_STEPS samples per picture. The caller sets eval mode (no dropout) and autocast."""
    steps = eval_timesteps(len(alphas))
    t = torch.tensor(steps, device=device)
    picks = eval_picks(len(items.pixels), limit)
    total = 0.0
    for i in picks:
        mean, _ = latent_params(vae, items, [i], cached, device)             # [1, C, h, w]
        noise = torch.randn((len(steps), *mean.shape[1:]), generator=torch.Generator().manual_seed(
            derive_seed(0, i, purpose=_EVAL))).to(device)
        x0 = (mean * vae.config.scaling_factor).expand_as(noise)
        batch = make_batch(base, text, items, [i] * len(steps), x0, noise, t, alphas, device)
        total += float(unet_losses(unet, batch, alphas, base.prediction).double().mean())
    return total / len(picks)
