"""How each diffusion-transformer family lays out its latents and conditioning, around one call of the model.

    z = model_latents("Flux.1", vae, mean_or_sample)           # [B, C, H, W] in the transformer's latent scale
    pred = predict("Flux.1", transformer, noisy, timesteps, text)  # [B, C, H, W], same layout as `noisy`

- **Flux.1**: latents (x - shift_factor) * scaling_factor; every 2x2 patch of C channels becomes one token of
  4C values, channel-major within the patch (`c, dy, dx`); positions (0, row, col) per token, text positions
  zeros; timestep sigma (T / 1000); `guidance` (3.5) where the transformer has `guidance_embeds`.
- **Flux.2**: latents patchified first (2x2 patches to 4C channels, same order), then normalised per channel with
  the VAE's batch-norm running statistics, (x - mean) / sqrt(var + eps); each position is one token,
  positions (0, row, col, 0), text positions (0, 0, 0, k).
- **SD3**: latents (x - shift_factor) * scaling_factor, given to the transformer as [B, C, H, W] (it patchifies
  inside); timestep T (0..1000).

The transforms equal the diffusers pipelines' own (`FluxPipeline._pack_latents`, `Flux2Pipeline._patchify_latents`,
...), which tests check, but stand alone, so that training needs no pipeline object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TextInputs:
    """A batch's prompt embeddings: hidden states [B, L, D] and, for Flux.1 and SD3, pooled [B, P]."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None


def pack_2x2(latents: torch.Tensor) -> torch.Tensor:
    """Flux.1's packing: [B, C, H, W] -> [B, (H/2)(W/2), 4C], a token per 2x2 patch, values (c, dy, dx)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_2x2(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """pack_2x2 undone: [B, (H/2)(W/2), 4C] -> [B, C, H, W] for a latent of height x width."""
    b, _, d = tokens.shape
    return tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(
        b, d // 4, height, width)


def flux1_image_ids(height: int, width: int) -> torch.Tensor:
    """Flux.1 token positions [(H/2)(W/2), 3]: (0, row, col) of each 2x2 patch of a height x width latent."""
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """Flux.2's patchify: [B, C, H, W] -> [B, 4C, H/2, W/2], channel c's 2x2 patch at channels 4c .. 4c+3."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """patchify undone: [B, 4C, H, W] -> [B, C, 2H, 2W]."""
    b, c4, h, w = latents.shape
    return latents.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, h * 2, w * 2)


def tokens(latents: torch.Tensor) -> torch.Tensor:
    """Flux.2's packing: each position one token, [B, C, H, W] -> [B, HW, C] (row-major)."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h * w).transpose(1, 2)


def untokens(tokens_: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """tokens undone: [B, HW, C] -> [B, C, H, W]."""
    b, _, c = tokens_.shape
    return tokens_.transpose(1, 2).reshape(b, c, height, width)


def flux2_image_ids(height: int, width: int) -> torch.Tensor:
    """Flux.2 token positions [HW, 4]: (0, row, col, 0)."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    zeros = torch.zeros_like(rows)
    return torch.stack([zeros, rows, cols, zeros], dim=-1).reshape(-1, 4)


def flux2_text_ids(length: int) -> torch.Tensor:
    """Flux.2 text positions [L, 4]: (0, 0, 0, k)."""
    ids = torch.zeros(length, 4, dtype=torch.long)
    ids[:, 3] = torch.arange(length)
    return ids


def batch_norm_stats(vae: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux.2's latent normalisation, (mean, std) [1, 4C, 1, 1], from the VAE's batch-norm running statistics."""
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return mean, std


def model_latents(family: str, vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's latents [B, C, H, W] in the scale the transformer learns ([B, 4C, H/2, W/2] for Flux.2)."""
    if family == "Flux.2":
        mean, std = batch_norm_stats(vae)
        return (patchify(latents) - mean.to(latents)) / std.to(latents)
    shift = vae.config.get("shift_factor") or 0.0
    return (latents - shift) * vae.config.scaling_factor


def guidance_for(transformer: nn.Module, batch: int, value: float, like: torch.Tensor) -> torch.Tensor | None:
    """The guidance input [B] for guidance-distilled transformers (`guidance_embeds`), else None."""
    if not transformer.config.get("guidance_embeds", False):
        return None
    return torch.full((batch,), value, device=like.device, dtype=like.dtype)


def predict(family: str, transformer: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextInputs,
            guidance: float = 3.5) -> torch.Tensor:
    """One transformer call on noisy latents [B, C, H, W] at table timesteps [B] (0..1000); the prediction in
    the same layout as `noisy`."""
    b, _, h, w = noisy.shape
    if family == "SD3":
        return transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=text.hidden,
                           pooled_projections=text.pooled, return_dict=False)[0]
    g = guidance_for(transformer, b, guidance, noisy)
    t = timesteps.to(noisy.dtype) / 1000
    if family == "Flux.1":
        out = transformer(hidden_states=pack_2x2(noisy), timestep=t, guidance=g, pooled_projections=text.pooled,
                          encoder_hidden_states=text.hidden, txt_ids=torch.zeros(text.hidden.shape[1], 3).to(noisy),
                          img_ids=flux1_image_ids(h, w).to(noisy), return_dict=False)[0]
        return unpack_2x2(out, h, w)
    out = transformer(hidden_states=tokens(noisy), timestep=t, guidance=g, encoder_hidden_states=text.hidden,
                      txt_ids=flux2_text_ids(text.hidden.shape[1]).to(noisy.device),
                      img_ids=flux2_image_ids(h, w).to(noisy.device), return_dict=False)[0]
    return untokens(out[:, : h * w], h, w)
