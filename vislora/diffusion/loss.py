"""The denoising objective: noise, timesteps, targets and min-SNR weights, as pure tensor functions.

With a_t = alphas_cumprod[t] (the scheduler's table), x0 the clean latent and e ~ N(0, I):

    x_t        = sqrt(a_t) x0 + sqrt(1 - a_t) e                 (the forward process)
    target     = e                                (epsilon)    |  sqrt(a_t) e - sqrt(1 - a_t) x0  (v_prediction)
    snr(t)     = a_t / (1 - a_t)
    min-SNR-g  = min(snr, g) / snr                (epsilon)    |  min(snr, g) / (snr + 1)         (v_prediction)
    loss       = mean over samples of  weight * mean over (C, H, W) of (pred - target)^2

Noise offset (a constant per sample and channel, e += offset * N(0, 1) [B, C, 1, 1]) lets the model learn
darker and brighter images than plain noise allows. Each sample's draws come from its own generator, so a
sample gets the same noise whichever process or batch position trains it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PREDICTIONS = ("epsilon", "v_prediction")


@dataclass
class Draw:
    """One sample's random draws: latent sampling noise, diffusion noise [C, H, W], and its timestep."""

    latent_noise: torch.Tensor
    noise: torch.Tensor
    timestep: int


def draw(shape: tuple[int, ...], generator: torch.Generator, num_timesteps: int, noise_offset: float = 0.0) -> Draw:
    """Draws for one latent of `shape` [C, H, W], in a fixed order from `generator`."""
    latent_noise = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    timestep = int(torch.randint(0, num_timesteps, (1,), generator=generator))
    offset = torch.randn((shape[0], 1, 1), generator=generator)  # drawn always, so the order never changes
    if noise_offset:
        noise = noise + noise_offset * offset
    return Draw(latent_noise, noise, timestep)


def _at(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return alphas_cumprod.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = _at(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
           prediction: str) -> torch.Tensor:
    if prediction == "epsilon":
        return noise
    a = _at(alphas_cumprod, t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def snr_weights(t: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float | None, prediction: str) -> torch.Tensor:
    """Per-sample loss weights [B]: min-SNR-gamma (Hang et al. 2023), or ones when gamma is None/0."""
    a = alphas_cumprod.to(t.device)[t].float()
    if not gamma:
        return torch.ones_like(a)
    snr = a / (1 - a)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction == "v_prediction" else clipped / snr


def per_sample_loss(pred: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every axis but the batch: [B], in fp32."""
    return (pred.float() - goal.float()).pow(2).flatten(1).mean(dim=1)
