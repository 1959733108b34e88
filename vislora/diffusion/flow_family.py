"""The flow-matching training families (SD3, Flux.1, Flux.2): the TrainingFamily entries the shared training
loop asks for a transformer base, built on flow_batch.

    family = flow_family(base)          # for a StableDiffusion3Pipeline, FluxPipeline, Flux2Pipeline ...
    part = family.batch(base, text, items, picks, cached, seeds, sigmas, device, 0.0)

The loop's `schedule` is the base's sigma table here (descending, in (0, 1]); its `alphas` argument carries it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..merge import disabled
from . import flow
from .bases import DiffusionBase
from .family import TrainingFamily
from .flow_batch import FlowBatch, FlowSpec, cat, flow_eval_loss, flow_losses, flow_training_batch, predict
from .flow_text import transformer_family
from .latents import TextCache

# The text encoders --train-text-encoder trains, with their presets (T5 and Flux.2's language model: none yet).
TEXT_ENCODERS = {"SD3": {"text_encoder": "text.attn", "text_encoder_2": "text2.attn"},
                 "Flux.1": {"text_encoder": "text.attn"}, "Flux.2": {}}


def spec_of(base: DiffusionBase) -> FlowSpec:
    return FlowSpec.of(transformer_family(base.pipe))


def _multiple_of(base: DiffusionBase) -> int:
    """The VAE's downsampling times the transformer's 2x2 patches (SD3's patch_size, Flux's packing)."""
    patch = base.pipe.transformer.config.get("patch_size", 2) if spec_of(base).family == "SD3" else 2
    return base.pipe.vae_scale_factor * patch


def _resolution(base: DiffusionBase) -> int:
    pipe = base.pipe
    if spec_of(base).family == "SD3":
        return pipe.transformer.config.sample_size * pipe.vae_scale_factor
    return getattr(pipe, "default_sample_size", 128) * pipe.vae_scale_factor


def _batch(base: DiffusionBase, text: TextCache, items, picks: list[int], cached, seeds: list[int],
           sigmas: torch.Tensor, device, noise_offset: float) -> FlowBatch:
    return flow_training_batch(spec_of(base), base.pipe.vae, text, items, picks, cached, seeds, sigmas, device,
                               noise_offset)


def _losses(transformer: nn.Module, batch: FlowBatch, sigmas: torch.Tensor, base: DiffusionBase,
            snr_gamma: float | None) -> torch.Tensor:
    return flow_losses(spec_of(base), transformer, batch)


def _preserve(base: DiffusionBase, transformer: nn.Module, text: TextCache, part: FlowBatch,
              prompt: str | list[str]) -> FlowBatch:
    """`part`'s noisy latents and sigmas with `prompt`'s text (one prompt for all, or one per sample); the goal
    is the base's own prediction there (every adapter off, no gradient), in the loss's space."""
    spec = spec_of(base)
    prompts = [prompt] * len(part) if isinstance(prompt, str) else list(prompt)
    emb = text(prompts, part.noisy.device)
    with torch.no_grad(), disabled(base.pipe):
        frozen = text(prompts, part.noisy.device) if not text.enabled else emb
        goal = predict(spec, transformer, part, frozen.hidden, frozen.pooled)
    return FlowBatch(part.noisy, part.sigmas, part.timesteps, emb.hidden, emb.pooled, goal.to(part.goal.dtype))


def _eval_loss(base: DiffusionBase, text: TextCache, items, cached, sigmas: torch.Tensor, device, limit: int) -> float:
    return flow_eval_loss(spec_of(base), base.pipe.transformer, base.pipe.vae, text, items, cached, sigmas, device,
                          limit)


FLOW = TrainingFamily(
    denoiser="transformer",
    preset="transformer.attn",
    conv_preset=None,  # linear layers only: the patch embedding is the one conv (SD3), outside the blocks
    text_encoders=lambda base: dict(TEXT_ENCODERS[spec_of(base).family]),
    multiple_of=_multiple_of,
    resolution=_resolution,
    schedule=lambda base: flow.SigmaTable.from_config(base.pipe.scheduler.config).sigmas,
    batch=_batch,
    join=cat,
    losses=_losses,
    preserve=_preserve,
    eval_loss=_eval_loss,
    # Predicting zero: the velocity e - x0 of unit-variance latents has variance about 2 (SD3's preconditioned
    # x0 target at most as much), so worse than that is diverging.
    zero_loss=lambda noise_offset: 2.0,
)
