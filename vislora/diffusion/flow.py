"""The rectified-flow (flow-matching) objective of diffusion transformers, as pure tensor functions.

With x0 the clean latent, e ~ N(0, I) and sigma in (0, 1] from the base's sigma table:

    x_t       = (1 - sigma) x0 + sigma e                       (the straight path from data to noise)
    target    = e - x0                                          (the velocity; Flux.1, Flux.2, SD3 plain)
    SD3 with output preconditioning: the prediction is mapped back to the data, pred' = x_t - sigma pred,
              and the target is x0 (so pred' - x0 = sigma (v - pred): the velocity error scaled by sigma)
    loss      = mean over samples of  weight(sigma) * mean over (C, H, W) of (pred - target)^2

Timesteps are drawn as the diffusers scripts draw them: u in [0, 1) from a density (`none`: uniform;
`logit_normal`: sigmoid of N(mean, std); `mode`: 1 - u - s (cos^2(pi u / 2) - 1 + u)), the index floor(u T)
into the scheduler's table of T timesteps (descending: index 0 is pure noise), and that entry's sigma. The
schemes `sigma_sqrt` (weight sigma^-2) and `cosmap` (2 / (pi (1 - 2 sigma + 2 sigma^2))) sample uniformly and
weight the loss instead; the other schemes weight by 1.

The sigma table is FlowMatchEulerDiscreteScheduler's at training time: sigma_i = (T - i) / T, shifted by the
config's `shift` as sigma' = s sigma / (1 + (s - 1) sigma) unless `use_dynamic_shifting` is set (Flux.1-dev:
the sampler shifts per resolution at inference, and training uses the plain table, as diffusers' scripts do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import VisloraError

SAMPLING = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")


@dataclass(frozen=True)
class FlowObjective:
    """What a family trains with: the timestep scheme, its parameters, SD3's output preconditioning, and the
    guidance value given to guidance-distilled transformers (those with `guidance_embeds`)."""

    weighting: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    precondition: bool = False
    guidance: float = 3.5


# Each family's default is what diffusers' script for it uses (train_dreambooth_lora_flux / _flux2 / _sd3).
DEFAULTS: dict[str, FlowObjective] = {
    "Flux.1": FlowObjective(weighting="none"),
    "Flux.2": FlowObjective(weighting="none"),
    "SD3": FlowObjective(weighting="logit_normal", precondition=True),
}


def check_weighting(weighting: str) -> str:
    if weighting not in SAMPLING:
        raise VisloraError(f"--weighting {weighting!r}: not a timestep scheme; choose one of {', '.join(SAMPLING)}")
    return weighting


@dataclass(frozen=True)
class SigmaTable:
    """The training-time schedule: `timesteps` [T] (descending, sigma * T) and `sigmas` [T] in (0, 1]."""

    timesteps: torch.Tensor
    sigmas: torch.Tensor

    @property
    def num_train_timesteps(self) -> int:
        return len(self.sigmas)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SigmaTable":
        """From a FlowMatchEulerDiscreteScheduler config (a dict or the scheduler's `config`)."""
        steps = int(config.get("num_train_timesteps", 1000))
        shift = float(config.get("shift", 1.0))
        # float32 and the same operations as the scheduler, so the table matches it bit for bit
        t = torch.linspace(1, steps, steps, dtype=torch.float64).to(torch.float32).flip(0)
        sigmas = t / steps
        if not config.get("use_dynamic_shifting", False):
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        return cls(sigmas * steps, sigmas)

    def at(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps [B], sigmas [B]) at table indices [B]."""
        index = index.clamp(0, self.num_train_timesteps - 1)  # `mode` reaches u = 1 when rand gives exactly 0
        return self.timesteps[index], self.sigmas[index]


def sample_u(objective: FlowObjective, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """u [B] in [0, 1] from the objective's density, drawn from `generator` in diffusers' order."""
    w = check_weighting(objective.weighting)
    if w == "logit_normal":
        return torch.sigmoid(torch.normal(objective.logit_mean, objective.logit_std, (batch,), generator=generator))
    u = torch.rand((batch,), generator=generator)
    if w == "mode":
        return 1 - u - objective.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def table_index(u: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """floor(u T): u's entry in the (descending) table."""
    return (u * num_train_timesteps).long()


def loss_weights(weighting: str, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights [B] (fp32) for the scheme: sigma^-2, cosmap, or ones."""
    w = check_weighting(weighting)
    sigmas = sigmas.float()
    if w == "sigma_sqrt":
        return sigmas ** -2.0
    if w == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    return torch.ones_like(sigmas)


def _column(sigmas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigmas.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma e, sigma [B] broadcast over the sample's axes."""
    s = _column(sigmas, x0)
    return (1.0 - s) * x0 + s * noise


def target(x0: torch.Tensor, noise: torch.Tensor, precondition: bool) -> torch.Tensor:
    """The regression target: x0 with output preconditioning, else the velocity e - x0."""
    return x0 if precondition else noise - x0


def precondition_output(pred: torch.Tensor, noisy: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """SD3's preconditioned prediction of x0: x_t - sigma pred."""
    return pred * (-_column(sigmas, noisy)) + noisy


@dataclass
class FlowDraw:
    """One sample's random draws: latent sampling noise and flow noise [C, H, W], and its table index."""

    latent_noise: torch.Tensor
    noise: torch.Tensor
    index: int


def draw(shape: tuple[int, ...], generator: torch.Generator, objective: FlowObjective,
         num_train_timesteps: int) -> FlowDraw:
    """Draws for one latent of `shape`, in a fixed order from its own generator (whichever process or batch
    position trains the sample, it gets the same draws)."""
    latent_noise = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    index = int(table_index(sample_u(objective, 1, generator), num_train_timesteps)[0])
    return FlowDraw(latent_noise, noise, index)


def eval_indices(num_train_timesteps: int, count: int) -> list[int]:
    """`count` table indices at the centres of equal slices of the table (sigma spread over (0, 1))."""
    return [(2 * k + 1) * num_train_timesteps // (2 * count) for k in range(count)]
