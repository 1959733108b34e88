"""One flow-matching batch of a diffusion recipe on a transformer base (SD3, Flux.1, Flux.2): inputs drawn per
sample, one transformer call, per-sample losses; and the evaluation loss at fixed noise and timesteps.

    part = flow_training_batch(spec, vae, text, items, [3, 0], cached, seeds, sigmas, device)   # FlowBatch
    losses = flow_losses(spec, transformer, cat([part, prior_part]))                             # [2B]
    before = flow_eval_loss(spec, transformer, vae, text, items, cached, sigmas, device)          # a float

`spec` names the family and its objective (FlowSpec). `sigmas` is the base's training table
(flow.SigmaTable.from_config(scheduler.config).sigmas, descending); a sample's table index comes from its own
seeded draws, as the UNet's timestep does (flow.draw), so a sample gets the same draws whichever process or batch
position trains it. The evaluation loss: up to `limit` pictures, each at EVAL_STEPS table indices spread over
the table, noise seeded by the picture's index, the latent mean, no loss weights: the same numbers at every
evaluation of every run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from ..basics import derive_seed
from ..errors import VisloraError
from . import flow
from . import flow_layout as fl
from .denoise import eval_picks
from .latents import Items, latent_params

EVAL_STEPS = 8
_EVAL = 5  # derive_seed purpose of the evaluation noise, as the UNet's evaluation uses


@dataclass(frozen=True)
class FlowSpec:
    """A transformer base's family ("SD3", "Flux.1", "Flux.2") and its objective (flow.DEFAULTS[family])."""

    family: str
    objective: flow.FlowObjective

    @classmethod
    def of(cls, family: str, **changes) -> "FlowSpec":
        from dataclasses import replace

        return cls(family, replace(flow.DEFAULTS[family], **changes))


@dataclass
class FlowBatch:
    """One transformer call: noisy latents x_t [B, C, h, w] (the transformer's latent scale), table sigmas and
    timesteps [B], text states [B, L, D], pooled [B, P] (None for Flux.2), and the regression target."""

    noisy: torch.Tensor
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    hidden: torch.Tensor
    pooled: torch.Tensor | None
    goal: torch.Tensor

    def __len__(self) -> int:
        return len(self.sigmas)


def cat(parts: list[FlowBatch]) -> FlowBatch:
    def join(name: str) -> torch.Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return FlowBatch(**{f.name: join(f.name) for f in fields(FlowBatch)})


def make_batch(spec: FlowSpec, text, prompts: list[str], x0: torch.Tensor, noise: torch.Tensor,
               index: torch.Tensor, sigmas: torch.Tensor, device) -> FlowBatch:
    """x_t and the target from clean latents x0 [B, C, h, w] (transformer scale), noise and table indices [B]."""
    s = sigmas.to(device)[index]
    emb = text(prompts, device)
    return FlowBatch(flow.add_noise(x0, noise, s), s, s * len(sigmas), emb.hidden, emb.pooled,
                     flow.target(x0, noise, spec.objective.precondition))


def flow_training_batch(spec: FlowSpec, vae: nn.Module, text, items: Items, indices: list[int], cached,
                        seeds: list[int], sigmas: torch.Tensor, device, noise_offset: float = 0.0) -> FlowBatch:
    """Sample j draws its latent noise, flow noise and table index from a generator seeded by seeds[j]. Flux.2
    trains on the latent mean (its script's `mode()`), the others on a sample. No noise offset: it shifts
    noise-prediction targets; a flow target has no place for it."""
    if noise_offset:
        raise VisloraError(f"--noise-offset {noise_offset}: flow-matching bases ({spec.family}) train without one")
    mean, std = latent_params(vae, items, indices, cached, device)           # [B, C, h, w]
    draws = [flow.draw(tuple(mean.shape[1:]), torch.Generator().manual_seed(s), spec.objective, len(sigmas))
             for s in seeds]
    eps = torch.stack([d.latent_noise for d in draws]).to(device)
    latents = mean if spec.family == "Flux.2" else mean + std * eps
    x0 = fl.model_latents(spec.family, vae, latents)
    noise = torch.stack([d.noise for d in draws]).to(device, x0.dtype)
    if spec.family == "Flux.2":  # noise in the patchified layout (the draws were made in the VAE's)
        noise = torch.stack([fl.patchify(d.noise[None])[0] for d in draws]).to(device, x0.dtype)
    index = torch.tensor([d.index for d in draws], device=device)
    return make_batch(spec, text, [items.data.captions[i] for i in indices], x0, noise, index, sigmas, device)


def predict(spec: FlowSpec, transformer: nn.Module, batch: FlowBatch, hidden=None, pooled=None) -> torch.Tensor:
    """The transformer's output on the batch, preconditioned (SD3) into the target's space."""
    text = fl.TextInputs(batch.hidden if hidden is None else hidden, batch.pooled if pooled is None else pooled)
    pred = fl.predict(spec.family, transformer, batch.noisy, batch.timesteps, text, spec.objective.guidance)
    if spec.objective.precondition:
        pred = flow.precondition_output(pred, batch.noisy, batch.sigmas)
    return pred


def flow_losses(spec: FlowSpec, transformer: nn.Module, batch: FlowBatch) -> torch.Tensor:
    """Per-sample losses [B]: the scheme's weight x mean over (C, h, w) of (prediction - target)^2, fp32."""
    pred = predict(spec, transformer, batch)
    per_sample = (pred.float() - batch.goal.float()).pow(2).flatten(1).mean(dim=1)
    return per_sample * flow.loss_weights(spec.objective.weighting, batch.sigmas)


@torch.no_grad()
def flow_eval_loss(spec: FlowSpec, transformer: nn.Module, vae: nn.Module, text, items: Items, cached,
                   sigmas: torch.Tensor, device, limit: int = 16) -> float:
    """The mean plain (unweighted) flow loss at fixed noise and table indices (see the module docstring)."""
    index = torch.tensor(flow.eval_indices(len(sigmas), EVAL_STEPS), device=device)
    picks = eval_picks(len(items.pixels), limit)
    plain = FlowSpec(spec.family, flow.FlowObjective(precondition=spec.objective.precondition,
                                                      guidance=spec.objective.guidance))
    total = 0.0
    for i in picks:
        mean, _ = latent_params(vae, items, [i], cached, device)             # [1, C, h, w]
        x0 = fl.model_latents(spec.family, vae, mean).expand(EVAL_STEPS, -1, -1, -1)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(derive_seed(0, i, purpose=_EVAL)))
        batch = make_batch(plain, text, [items.data.captions[i]] * EVAL_STEPS, x0, noise.to(device, x0.dtype),
                           index, sigmas, device)
        total += float(flow_losses(plain, transformer, batch).double().mean())
    return total / len(picks)
